"""`qfleet bench scaling --shards 1,2,4` and `--relays off,on`: replay shards and weights relays.

--shards: for each shard count, one run with the rate limiter off at the largest `--actors`
count: the replay side's capacity, as transitions stored/s (ingest), samples/s and learner
updates/s, with each shard's stored/s from its own counters.

--relays: with the relay off and on, one run in the training setting (limiter on) at
`--relay-actors` actors: publish-to-use lag p50/p99 (the actors' own policy-lag reports,
which time the hop through the relay too) and the bytes/s leaving the learner's weights
socket. A PUB socket sends every message once per subscriber, so those bytes are the
publisher's own count per message (learner/publisher.py: bytes_sent / sends) x messages/s
in the window (new versions; re-publications happen only after republish_s without one)
x subscribers (the actors without a relay, the relays with one; actors that fell back to
the learner would add theirs). The relay's bytes out are its messages/s x the same message
size x the actors it serves.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from qfleet.deploy.bench.report import machine, markdown_table, write_json

SHARD_COLUMNS = ["shards", "actors", "transitions_stored_per_s", "samples_per_s", "learner_updates_per_s",
                 "stored_per_s_by_shard", "cpu_total_percent"]
RELAY_COLUMNS = ["relay", "actors", "policy_lag_ms_p50", "policy_lag_ms_p99", "versions_per_s", "weights_message_bytes",
                 "learner_weights_bytes_per_s", "relay_bytes_out_per_s", "learner_updates_per_s"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shards", help="replay shard counts to measure (limiter off), e.g. 1,2,4")
    p.add_argument("--relays", help="weights relay settings to compare (limiter on), e.g. off,on")
    p.add_argument("--relay-actors", type=int, default=16, help="actors in the --relays runs")


def _summary(run: Path) -> dict:
    path = run / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}


def shard_row(shard_count: int):
    def after(row: dict, run: Path) -> None:
        row["shards"] = shard_count
        replay = _summary(run).get("replay", {})
        by_shard = replay.get("shards", {"0": replay})
        elapsed = {i: s.get("uptime_s") or 0 for i, s in by_shard.items()}
        # Over the whole run (uptime), not the window: the window's figures are summed over shards.
        row["stored_per_s_by_shard"] = [round(s.get("stored", 0) / elapsed[i]) if elapsed[i] else None
                                        for i, s in sorted(by_shard.items(), key=lambda kv: int(kv[0]))]
    return after


def relay_row(relay: bool, actors: int):
    def after(row: dict, run: Path) -> None:
        summary = _summary(run)
        learner = summary.get("learner", {})
        size = learner.get("weights_bytes", 0) / learner["weights_sends"] if learner.get("weights_sends") else 0.0
        relays = summary.get("relays", {})
        subscribers = len(relays) if relay else actors
        row.update({"relay": "on" if relay else "off", "weights_message_bytes": round(size),
                    "learner_weights_bytes_per_s": row["versions_per_s"] * size * subscribers,
                    "relay_bytes_out_per_s": row["versions_per_s"] * size * actors if relay else 0.0,
                    "relay_forwarded": sum(r.get("forwarded", 0) for r in relays.values())})
    return after


def run(args: argparse.Namespace) -> int:
    from qfleet.deploy.bench.scaling import measure

    actors = max(int(x) for x in args.actors.split(","))
    shard_rows, relay_rows = [], []
    with tempfile.TemporaryDirectory(prefix="qfleet-shards-") as tmp:
        for count in [int(x) for x in (args.shards or "").split(",") if x]:
            row = measure(actors, "off", args, Path(tmp), extra=(f"replay.shards={count}",), tag=f"-s{count}",
                          after=shard_row(count))
            shard_rows.append(row)
            print(f"{count} shard(s), {actors} actors, limiter off: {row['transitions_stored_per_s']:,.0f} stored/s "
                  f"({row['stored_per_s_by_shard']}), {row['samples_per_s']:,.0f} samples/s, "
                  f"{row['learner_updates_per_s']:,.0f} updates/s, cpu {row['cpu_percent']}", flush=True)
        for setting in [x.strip() for x in (args.relays or "").split(",") if x.strip()]:
            on = setting == "on"
            row = measure(args.relay_actors, "on", args, Path(tmp), extra=(f"relay.enabled={str(on).lower()}",),
                          tag=f"-relay-{setting}", after=relay_row(on, args.relay_actors))
            relay_rows.append(row)
            print(f"relay {setting}, {args.relay_actors} actors: lag p50/p99 {row['policy_lag_ms_p50']:.1f}/"
                  f"{row['policy_lag_ms_p99']:.1f} ms, learner weights socket {row['learner_weights_bytes_per_s']:,.0f} "
                  f"B/s, relay out {row['relay_bytes_out_per_s']:,.0f} B/s", flush=True)
    tables = [markdown_table(rows, cols) for rows, cols in ((shard_rows, SHARD_COLUMNS), (relay_rows, RELAY_COLUMNS))
              if rows]
    print("\n\n".join(tables))
    if args.table:
        Path(args.table).write_text("\n\n".join(tables) + "\n")
    write_json({"backend": args.backend, "shards": shard_rows, "relays": relay_rows, "overrides": args.set,
                "machine": machine()}, args.json)
    return 0
