"""The actor: steps V environments as one vectorized batch with per-environment epsilons,
turns steps into n-step transitions, pushes them to the replay server, and applies new
weights from the learner between steps.

The call loop (see `Actor.run`):

    obs = envs.reset()
    while not stopped:
        weights.poll()                  # newest version, if any, between steps
        actions = policy(obs, epsilons)
        next_obs, reward, terminated, truncated = envs.step(actions)
        adder.add(...)                  # n-step transitions, autoreset steps skipped
        replay.insert(...)              # every flush_every_steps, with backpressure
"""
