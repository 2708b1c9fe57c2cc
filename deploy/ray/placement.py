"""Where the Ray backend asks Ray to put each component (`ray` config section).

    replay shard  the `ray.replay_resource` nodes when the cluster has them; with several
                  shards, spread over those nodes (or over all nodes) one by one, each
                  shard preferring its node (soft node affinity: a restart comes back on
                  it, next to its snapshots, and goes elsewhere only if the node is gone)
    learner       the `ray.learner_resource` node, a GPU when the cluster has one
    actor         the `ray.actor_resource` nodes, spread (Ray's SPREAD strategy)
    relay         exactly the node of the actors it serves (hard node affinity)
"""
from __future__ import annotations

from typing import Optional

from qfleet.common.config import QfleetConfig

RELAY_CPUS = 0.1  # a relay forwards a few weights messages a second


def alive_nodes() -> list[dict]:
    import ray

    return sorted((n for n in ray.nodes() if n.get("Alive")), key=lambda n: n["NodeID"])


def shard_nodes(cfg: QfleetConfig) -> list[Optional[str]]:
    """The node each replay shard prefers: None for one shard (Ray places it by resources,
    as before shards existed), else the replay-resource nodes (all nodes when none offers
    it) in turn, so S shards spread over as many nodes as there are."""
    shards = cfg.replay.shards
    if shards == 1:
        return [None]
    nodes = alive_nodes()
    pinned = [n["NodeID"] for n in nodes if n.get("Resources", {}).get(cfg.ray.replay_resource, 0) > 0]
    candidates = pinned or [n["NodeID"] for n in nodes]
    return [candidates[i % len(candidates)] for i in range(shards)]


def options(cfg: QfleetConfig, role: str, node: Optional[str] = None) -> dict:
    """Ray actor options for one component; `node` is the node a replay shard prefers or a
    relay must run on."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    r, run = cfg.ray, cfg.run
    available = ray.cluster_resources()
    opts: dict = {"max_concurrency": 4, "max_restarts": 0, "max_task_retries": 0}
    resource = {"replay": r.replay_resource, "learner": r.learner_resource, "actor": r.actor_resource}.get(role)
    if resource and available.get(resource, 0) > 0:
        opts["resources"] = {resource: 1e-3}
    if role == "replay":
        opts["num_cpus"] = r.replay_cpus
        opts["max_restarts"] = run.max_core_restarts  # restarted from its snapshot; the learner samples the others
    elif role == "learner":
        opts["num_cpus"] = r.learner_cpus
        opts["num_gpus"] = (1.0 if available.get("GPU", 0) >= 1 else 0.0) if r.learner_gpus < 0 else r.learner_gpus
    elif role == "relay":
        opts["num_cpus"] = RELAY_CPUS
        opts["max_restarts"] = run.max_actor_restarts
    else:
        opts["num_cpus"] = r.actor_cpus
        opts["max_restarts"] = run.max_actor_restarts
        if r.spread_actors:
            opts["scheduling_strategy"] = "SPREAD"
    if node is not None:
        opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=role == "replay")
    return opts
