"""qfleet: distributed actor-learner DQN (Ape-X family) over ZeroMQ, locally or on Ray.

The subpackages are the repository's top-level folders (see pyproject.toml):
qfleet.common, qfleet.actors, qfleet.replay_server, qfleet.learner, qfleet.deploy.
"""
