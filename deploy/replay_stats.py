"""The replay figures of a run with S shards: each shard's own stats, and their sum as if
they were one table (what the status line, the replay/* metrics and the summary's "replay"
show). With one shard the figures are that server's own, unchanged."""
from __future__ import annotations

from typing import Optional

from qfleet.common.errors import QfleetTimeout
from qfleet.replay_server.client import ReplayClient

# Figures every shard has the same of (the first shard's is the run's), or that do not add up.
SAME_ON_EVERY_SHARD = ("obs_dtype", "obs_shape", "bytes_per_transition", "max_sample_batch")
LONGEST = ("uptime_s",)
OWN = ("pid",)  # each shard's, kept under "shards" only


def merge(shards: dict[int, dict]) -> dict:
    """One table's stats from the shards' (by index); 'shards' keeps each shard's own."""
    if not shards:
        return {}
    if len(shards) == 1 and 0 in shards:
        return dict(shards[0])
    total: dict = {}
    for stats in shards.values():
        for key, value in stats.items():
            if key in OWN:
                continue
            if key in SAME_ON_EVERY_SHARD:
                total.setdefault(key, value)
            elif key in LONGEST:
                total[key] = max(total.get(key, value), value)
            elif isinstance(value, bool):
                total[key] = total.get(key, False) or value
            elif isinstance(value, (int, float)):
                total[key] = total.get(key, 0) + value
    # The achieved ratio over all shards, not a sum of ratios.
    total["samples_per_insert"] = total.get("sampled", 0) / total["stored"] if total.get("stored") else 0.0
    total["shards"] = {str(i): dict(s) for i, s in sorted(shards.items())}
    return total


class ReplayShards:
    """The launcher's clients of the replay shards, for their counters (not for data)."""

    def __init__(self, plan, request_endpoints: list[str], keys) -> None:
        self.clients = [ReplayClient(obs_shape=plan.env.obs_shape, obs_dtype=plan.env.obs_dtype,
                                     request_endpoint=endpoint, keys=keys, timeout=0.5)
                        for endpoint in request_endpoints]

    def poll(self, final: set, timeout_s: float = 0.5) -> dict[int, dict]:
        """Stats of the shards that answer, except those whose final count has arrived."""
        out: dict[int, dict] = {}
        for index, client in enumerate(self.clients):
            if index in final:
                continue
            try:
                out[index] = client.stats(timeout=timeout_s / len(self.clients))
            except QfleetTimeout:  # a shard restarting: its last figures stand
                continue
        return out

    def first(self) -> Optional[ReplayClient]:
        return self.clients[0] if self.clients else None

    def close(self) -> None:
        for client in self.clients:
            client.close()
