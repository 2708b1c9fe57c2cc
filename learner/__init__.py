"""The learner: Double DQN with a target network, fed by prefetched prioritized samples,
publishing versioned weights, evaluating greedily in the background, checkpointing.

The call loop (see `Learner.run`):

    publisher.publish(weights, version=0)
    while not stopped:
        batch = prefetcher.get()                     # requests already in flight
        td = update.step(batch)                      # forward, target, loss, backward, clip, Adam
        prefetcher.send_priorities(batch.keys, |td| + eps)
        every publish_every updates: publisher.publish(weights, version + 1)
        every eval_every_s: evaluator.submit(weights)   # runs in a background thread
"""
