"""The replay server: ring-buffer storage, sum-tree prioritized sampling, a Reverb-style
rate limiter, the ZeroMQ server loop, its thin client, and snapshots.

`Table` is the whole data structure in one process (no sockets); `ReplayServer` serves a
Table over ZeroMQ; `ReplayClient` is what actors and the learner hold.
"""
