"""The replay server loop: a PULL socket for inserts and a ROUTER socket for requests.

    actors  --InsertBatch-->  PULL    (many PUSH peers; backpressure via the HWM)
    learner --SampleRequest / PriorityUpdate / StatsRequest / SnapshotRequest--> ROUTER

One thread owns the table. Requests are served before inserts so sample latency stays low.
When the rate limiter refuses an insert, the server holds that one message and stops
reading the PULL socket, so actors feel backpressure through ZeroMQ's high-water mark.
When it refuses a sample, the request waits (up to `sample_wait_s`) and is then answered
`rate_limited`. Every malformed message is rejected, counted by reason, and logged; the
server keeps serving and what it stored is untouched.
"""
from __future__ import annotations

import logging
import time
from collections import Counter, deque
from typing import Callable, Optional

import zmq

from qfleet.common import messages as m
from qfleet.common.codec import decode
from qfleet.common.errors import CodecError, RequestError
from qfleet.common.sockets import CurveKeys, bind, make_socket, send_nowait
from qfleet.replay_server.snapshot import SnapshotStore
from qfleet.replay_server.table import Table

log = logging.getLogger("qfleet.replay")

MAX_WAITING_SAMPLES = 256   # sample requests parked on the rate limiter before 'busy' answers
MAX_READS_PER_TURN = 64     # messages read from one socket before looking at the other


class ReplayServer:
    def __init__(self, *, table: Table, host: str = "127.0.0.1", insert_port: int = 0, request_port: int = 0,
                 max_message_bytes: int, max_sample_batch: int, max_insert_batch: int = 4096, insert_hwm: int = 64,
                 sample_wait_s: float = 1.0, keys: Optional[CurveKeys] = None,
                 snapshots: Optional[SnapshotStore] = None, snapshot_every_s: float = 0.0,
                 ctx: Optional[zmq.Context] = None):
        self.table = table
        self.schemas = m.replay_schemas(table.storage.obs_shape, table.storage.obs_dtype, max_batch=1 << 20)
        self.max_message_bytes = max_message_bytes
        self.max_sample_batch = max_sample_batch
        self.max_insert_batch = max_insert_batch
        self.sample_wait_s = sample_wait_s
        self.snapshots = snapshots
        self.snapshot_every_s = snapshot_every_s
        self._ctx = ctx or zmq.Context.instance()
        common = dict(server=True, keys=keys, max_message_bytes=max_message_bytes)
        self._pull = make_socket(self._ctx, zmq.PULL, hwm=insert_hwm, **common)
        self._router = make_socket(self._ctx, zmq.ROUTER, hwm=1024, **common)
        self.insert_endpoint = bind(self._pull, host, insert_port)
        self.request_endpoint = bind(self._router, host, request_port)
        self._both, self._requests_only = zmq.Poller(), zmq.Poller()
        self._both.register(self._router, zmq.POLLIN)
        self._both.register(self._pull, zmq.POLLIN)
        self._requests_only.register(self._router, zmq.POLLIN)
        self._held_insert: Optional[m.InsertBatch] = None
        self._held_since = 0.0
        self.accept_all_inserts = False  # set when the run is stopping: keep what actors still send
        self._waiting: deque = deque()  # (deadline, identity, SampleRequest)
        self.counts: Counter = Counter()
        self.rejected: Counter = Counter()          # reason -> messages
        self.stored_by_actor: Counter = Counter()   # actor id -> transitions
        self.last_seq: dict[int, int] = {}
        self.seq_gaps: Counter = Counter()          # actor id -> insert messages never seen
        self._started = time.monotonic()
        self._last_snapshot = time.monotonic()
        self._last_log = 0.0

    def serve(self, should_stop: Callable[[], bool], poll_s: float = 0.05) -> None:
        while not should_stop():
            self.step(poll_s)

    def step(self, timeout_s: float) -> None:
        """One turn: wait up to timeout_s for traffic, serve requests, then inserts."""
        poller = self._requests_only if self._held_insert is not None else self._both
        events = dict(poller.poll(int(timeout_s * 1000)))
        if self._router in events:
            self._drain(self._router, self._handle_request)
        if self._held_insert is not None and self._try_store(self._held_insert):
            self.counts["insert_held_ms"] += int((time.monotonic() - self._held_since) * 1000)
            self._held_insert = None
        if self._pull in events and self._held_insert is None:
            self._drain(self._pull, self._handle_insert)
        self._serve_waiting()
        if self.snapshots:
            self.snapshots.keep_up(self.table)
        if self.snapshot_every_s and self.snapshots and time.monotonic() - self._last_snapshot >= self.snapshot_every_s:
            self.snapshot()

    def _drain(self, sock: zmq.Socket, handle: Callable[[list], bool]) -> None:
        for _ in range(MAX_READS_PER_TURN):
            try:
                frames = sock.recv_multipart(copy=False, flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            if not handle(frames):
                return

    # -- inserts -----------------------------------------------------------------------
    def _decode_insert(self, frames: list) -> Optional[m.InsertBatch | m.InsertFrames]:
        """The insert batch in `frames`, or None after counting why it was rejected."""
        self.counts["insert_messages"] += 1
        try:
            msg = decode(frames, self.schemas, max_bytes=self.max_message_bytes)
            if msg.type not in (m.INSERT, m.INSERT_FRAMES):
                raise CodecError("unknown_type", f"'{msg.type}' sent to the insert socket, which takes only inserts")
        except CodecError as exc:
            self._reject(exc, "insert")
            return None
        batch = m.unpack(m.InsertFrames if msg.type == m.INSERT_FRAMES else m.InsertBatch, msg)
        if len(batch.action) > self.max_insert_batch:
            self._reject(CodecError("oversized", f"insert of {len(batch.action)} transitions; the limit is "
                                                 f"{self.max_insert_batch}"), "insert", transitions=len(batch.action))
            return None
        return batch

    def _handle_insert(self, frames: list) -> bool:
        """Returns False when the rate limiter holds this batch (stop reading inserts)."""
        batch = self._decode_insert(frames)
        if batch is None or self._try_store(batch):
            return True
        self._held_insert = batch
        self._held_since = time.monotonic()
        self.counts["inserts_held"] += 1
        return False

    def drain(self, quiet_s: float = 0.1, max_s: float = 1.0) -> int:
        """At shutdown: store what actors already sent, bypassing the rate limiter, until the
        insert socket has been quiet for `quiet_s` (at most `max_s`). Returns messages read."""
        read, deadline = 0, time.monotonic() + max_s
        if self._held_insert is not None:
            self._try_store(self._held_insert, force=True)
            self._held_insert = None
        while time.monotonic() < deadline and self._pull.poll(int(quiet_s * 1000)):
            read += 1
            batch = self._decode_insert(self._pull.recv_multipart(copy=False))
            if batch is not None:
                self._try_store(batch, force=True)
        return read

    def _try_store(self, batch: m.InsertBatch | m.InsertFrames, force: bool = False) -> bool:
        n = len(batch.action)
        if not (force or self.accept_all_inserts) and not self.table.can_insert(n):
            return False
        before = self.table.counts["stored"]  # what the table accepted (frame tables drop unresolvable links)
        try:
            if isinstance(batch, m.InsertFrames):
                self.table.insert_frames(batch)
            else:
                self.table.insert({k: getattr(batch, k) for k in m.TRANSITION_FIELDS}, batch.priority)
        except RequestError as exc:
            self._reject(exc, "insert", transitions=n)
            return True
        self.stored_by_actor[batch.actor_id] += self.table.counts["stored"] - before
        previous = self.last_seq.get(batch.actor_id)
        if previous is not None and batch.seq > previous + 1:
            self.seq_gaps[batch.actor_id] += batch.seq - previous - 1
        self.last_seq[batch.actor_id] = batch.seq  # a restarted actor starts again from 0
        return True

    # -- requests ----------------------------------------------------------------------
    def _handle_request(self, frames: list) -> bool:
        identity, body = frames[0], frames[1:]
        self.counts["requests"] += 1
        request_id = -1
        try:
            msg = decode(body, self.schemas, max_bytes=self.max_message_bytes)
            request_id = msg.meta.get("request_id", -1)
            if msg.type == m.SAMPLE:
                self._handle_sample(identity, m.unpack(m.SampleRequest, msg))
            elif msg.type == m.PRIORITIES:
                update = m.unpack(m.PriorityUpdate, msg)
                self.table.update_priorities(update.keys, update.priority)
                self.counts["priority_updates"] += 1
            elif msg.type == m.STATS:
                self._reply(identity, m.STATS_REPLY, m.StatsReply(request_id, self.stats()))
            elif msg.type == m.SNAPSHOT:
                self._reply(identity, m.STATS_REPLY, m.StatsReply(request_id, self.snapshot()))
            else:
                raise CodecError("unknown_type", f"'{msg.type}' is not a request")
        except (CodecError, RequestError) as exc:
            self._reject(exc, "request")
            self._reply(identity, m.ERROR, m.ErrorReply(request_id if isinstance(request_id, int) else -1,
                                                        exc.reason, exc.detail))
        return True

    def _handle_sample(self, identity: bytes, req: m.SampleRequest) -> None:
        if req.batch_size < 1 or req.num_batches < 1 or req.batch_size * req.num_batches > self.max_sample_batch:
            raise RequestError("bad_batch_size", f"batch_size and num_batches must be >= 1 with batch_size * "
                                               f"num_batches <= {self.max_sample_batch}")
        if not 0 <= req.beta <= 1:
            raise RequestError("bad_beta", "beta must be in [0, 1]")
        if not self._waiting and self.table.can_sample(req.batch_size * req.num_batches):
            self._send_sample(identity, req)
        elif len(self._waiting) >= MAX_WAITING_SAMPLES:
            self._reply(identity, m.ERROR, m.ErrorReply(req.request_id, "busy", "too many waiting sample requests"))
        else:
            self._waiting.append((time.monotonic() + self.sample_wait_s, identity, req))

    def _serve_waiting(self) -> None:
        now = time.monotonic()
        while self._waiting:
            deadline, identity, req = self._waiting[0]
            if self.table.can_sample(req.batch_size * req.num_batches):
                self._waiting.popleft()
                self.counts["sample_wait_ms"] += int((now - deadline + self.sample_wait_s) * 1000)
                self.counts["samples_waited"] += 1
                self._send_sample(identity, req)
            elif now >= deadline:
                self._waiting.popleft()
                self.counts["samples_rate_limited"] += 1
                detail = f"table has {self.table.size} transitions; the rate limiter allows no sample yet"
                self._reply(identity, m.ERROR, m.ErrorReply(req.request_id, "rate_limited", detail))
            else:
                return

    def _send_sample(self, identity: bytes, req: m.SampleRequest) -> None:
        total, size = self.table.total_priority, self.table.size  # what the rows were drawn from
        batch = self.table.sample(req.batch_size, req.beta, req.num_batches)
        self.counts["sample_batches"] += req.num_batches
        self._reply(identity, m.SAMPLE_BATCH, m.SampleBatch(req.request_id, **batch, total_priority=total, size=size))

    def _reply(self, identity: bytes, mtype: str, msg) -> None:
        try:
            send_nowait(self._router, [identity] + m.pack(self.schemas[mtype], msg))
        except zmq.Again:
            self.counts["replies_dropped"] += 1

    def _reject(self, exc: CodecError | RequestError, where: str, transitions: int = 0) -> None:
        self.rejected[exc.reason] += 1
        self.counts[f"{where}_rejected"] += 1
        self.counts["rejected_transitions"] += transitions
        now = time.monotonic()
        if now - self._last_log > 5.0:  # a flood of garbage must not become a flood of logs
            self._last_log = now
            log.warning("rejected %s message (%s); %d rejected so far", where, exc, sum(self.rejected.values()))

    # -- stats and snapshots -------------------------------------------------------------
    def stats(self) -> dict:
        t, lim = self.table, self.table.limiter
        values = {
            "size": t.size, "total_priority": t.total_priority, "capacity": t.storage.capacity, "inserted": t.storage.inserted,
            "stored": t.counts["stored"], "sampled": t.counts["sampled"],
            "priorities_applied": t.counts["priorities_applied"], "priorities_stale": t.counts["priorities_stale"],
            "samples_per_insert": lim.samples / lim.inserts if lim.inserts else 0.0,
            "waiting_samples": len(self._waiting), "insert_held": self._held_insert is not None,
            "rejected": sum(self.rejected.values()), "table_bytes": t.nbytes,
            "obs_dtype": t.storage.obs_dtype.name, "obs_shape": "x".join(map(str, t.storage.obs_shape)),
            "bytes_per_transition": t.storage.bytes_per_transition, "max_sample_batch": self.max_sample_batch,
            "frames_missing": t.storage.frames_missing,
            "uptime_s": time.monotonic() - self._started,
        }
        values.update(self.counts)
        values.update({f"rejected.{k}": v for k, v in self.rejected.items()})
        values.update({f"stored_by_actor.{k}": v for k, v in self.stored_by_actor.items()})
        values.update({f"seq_gaps.{k}": v for k, v in self.seq_gaps.items()})
        return values

    def snapshot(self) -> dict:
        if self.snapshots is None:
            raise RequestError("no_snapshots", "this server was started without a snapshot directory")
        self.counts["snapshots"] += 1
        path = self.snapshots.save(self.table, self._counters())
        self._last_snapshot = time.monotonic()
        return {"path": str(path), "size": self.table.size, "inserted": self.table.storage.inserted}

    def _counters(self) -> dict:
        return {"counts": dict(self.counts), "rejected": dict(self.rejected),
                "stored_by_actor": {str(k): v for k, v in self.stored_by_actor.items()},
                "last_seq": {str(k): v for k, v in self.last_seq.items()},
                "seq_gaps": {str(k): v for k, v in self.seq_gaps.items()}}

    def restore(self) -> Optional[str]:
        """Load the newest snapshot (contents and counters); returns its path or None."""
        if self.snapshots is None:
            return None
        path, meta = self.snapshots.load_latest(self.table)
        self.counts.update(meta.get("counts", {}))
        self.rejected.update(meta.get("rejected", {}))
        self.stored_by_actor.update({int(k): v for k, v in meta.get("stored_by_actor", {}).items()})
        self.last_seq.update({int(k): v for k, v in meta.get("last_seq", {}).items()})
        self.seq_gaps.update({int(k): v for k, v in meta.get("seq_gaps", {}).items()})
        return None if path is None else str(path)

    def close(self) -> None:
        self._pull.close(0)
        self._router.close(0)
