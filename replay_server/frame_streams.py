"""Each actor process's frame numbers -> the frame store's frame ids (replay_server/frames.py).

Actors number their frames themselves (actors/frames.py), so the server needs, per actor
stream, the ids it gave that stream's recent frames; a restarted actor picks a new stream
number, and a restarted server starts with none (their links resolve again at each
environment's next whole stack)."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

STREAM_WINDOW = 1 << 15   # an actor's frames a new message may still refer to (per stream)
MAX_STREAMS = 256         # actor streams remembered (a restarted actor starts a new one)


class Stream:
    """One actor process's frame numbers -> frame ids, for its newest STREAM_WINDOW frames."""

    def __init__(self):
        self.local = np.full(STREAM_WINDOW, -1, np.int64)
        self.frame_id = np.zeros(STREAM_WINDOW, np.int64)
        self.next_local = 0

    def lookup(self, local: np.ndarray) -> np.ndarray:
        """Frame ids of earlier frames by their actor numbers; -1 where unknown (too old, or
        sent before this server started)."""
        slot = local % STREAM_WINDOW
        return np.where(self.local[slot] == local, self.frame_id[slot], -1)

    def record(self, first_local: int, first_id: int, count: int) -> None:
        local = np.arange(first_local, first_local + count, dtype=np.int64)
        self.local[local % STREAM_WINDOW] = local
        self.frame_id[local % STREAM_WINDOW] = np.arange(first_id, first_id + count, dtype=np.int64)
        self.next_local = first_local + count


class Streams:
    """The newest MAX_STREAMS streams, by (actor id, stream number)."""

    def __init__(self):
        self._streams: OrderedDict[tuple[int, int], Stream] = OrderedDict()

    def get(self, key: tuple[int, int]):
        return self._streams.get(key)

    def remember(self, key: tuple[int, int], stream: Stream) -> None:
        self._streams[key] = stream
        self._streams.move_to_end(key)
        while len(self._streams) > MAX_STREAMS:
            self._streams.popitem(last=False)

    def next_local(self, key: tuple[int, int]) -> int:
        known = self._streams.get(key)
        return known.next_local if known else 0

    def clear(self) -> None:
        self._streams.clear()
