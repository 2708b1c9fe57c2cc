"""Frame-at-a-time replay (actors/frames.py -> replay_server/frames.py) against a naive
store of whole stacks, on random episodes: every stored transition's observation and next
observation are rebuilt byte for byte, at episode starts, n-step ends, truncations,
keyframes, two actors' interleaved streams, frame-ring wrap-around and after a snapshot."""
import numpy as np
import pytest

from qfleet.actors.frames import FrameEncoder, frame_messages
from qfleet.actors.nstep import NStepAdder
from qfleet.common import messages as m
from qfleet.common.codec import decode
from qfleet.common.errors import RequestError
from qfleet.common.extras import available
from qfleet.replay_server import frame_files
from qfleet.replay_server import frames as frame_store
from qfleet.replay_server.rate_limiter import RateLimiter
from qfleet.replay_server.snapshot import SnapshotStore
from qfleet.replay_server.table import Table

K, H, W = 4, 6, 5
SHAPE = (K, H, W)


class SimActor:
    """Random stacked-frame episodes for `envs` environments (resets draw a fresh stack, as
    an env padding its first stack with anything), seen by both the frame path and a naive
    adder of whole stacks."""

    def __init__(self, index: int, envs: int, seed: int, keyframe_every: int = 9, n: int = 3):
        self.index, self.envs = index, envs
        self.rng = np.random.default_rng(seed)
        self.encoder = FrameEncoder(envs, SHAPE, keyframe_every=keyframe_every)
        self.ids_adder = NStepAdder(num_envs=envs, n=n, gamma=0.9, obs_shape=(), obs_dtype=np.int64)
        self.naive_adder = NStepAdder(num_envs=envs, n=n, gamma=0.9, obs_shape=SHAPE, obs_dtype=np.uint8)
        self.obs = self._fresh(envs)
        self.ids = self.encoder.encode(self.obs)
        self.done_prev = np.zeros(envs, bool)
        self.stream = 1000 + index

    def _fresh(self, count: int) -> np.ndarray:
        return self.rng.integers(0, 256, (count, *SHAPE), dtype=np.uint8)

    def steps(self, count: int) -> tuple[list[dict], list[dict]]:
        """`count` vector steps: (frame-path steps for frame_messages, naive transitions per step)."""
        frame_steps, naive = [], []
        for _ in range(count):
            new = self.rng.integers(0, 256, (self.envs, 1, H, W), dtype=np.uint8)
            if self.rng.random() < 0.1:  # a static screen: the new frame repeats the last one
                new[:] = self.obs[:, -1:]
            nxt = np.concatenate([self.obs[:, 1:], new], axis=1)
            nxt[self.done_prev] = self._fresh(int(self.done_prev.sum()))  # NEXT_STEP autoreset
            valid = ~self.done_prev
            terminated = self.rng.random(self.envs) < 0.06
            truncated = ~terminated & (self.rng.random(self.envs) < 0.03)
            reward = self.rng.normal(size=self.envs).astype(np.float32)
            action = self.rng.integers(0, 3, self.envs).astype(np.int32)
            next_ids = self.encoder.encode(nxt)
            out = self.ids_adder.add(self.ids, action, reward, next_ids, terminated, truncated, valid)
            naive.append(self.naive_adder.add(self.obs, action, reward, nxt, terminated, truncated, valid))
            first, frames, links = self.encoder.take()
            frame_steps.append({"frame_first": first, "frames": frames, "frame_prev": links, **out})
            self.done_prev = (terminated | truncated) & valid
            self.obs, self.ids = nxt, next_ids
        return frame_steps, naive

    def messages(self, count: int, max_transitions: int = 40) -> list[tuple[m.InsertFrames, dict]]:
        """Insert messages for `count` steps, each with the naive transitions it carries."""
        frame_steps, naive = self.steps(count)
        msgs = list(frame_messages(frame_steps, actor_id=self.index, version=0, stream=self.stream,
                                   max_transitions=max_transitions, max_frames=max_transitions))
        out, at = [], 0
        for msg in msgs:  # whole steps per message, in order (steps without transitions add no rows)
            rows, n = [], 0
            while n < len(msg.action):
                rows.append(naive[at])
                n += len(naive[at]["action"])
                at += 1
            out.append((msg, {k: np.concatenate([r[k] for r in rows]) if rows else naive[0][k][:0]
                              for k in m.TRANSITION_FIELDS}))
        return out


def make_table(capacity: int, prioritized: bool = False, codec: str = "none") -> Table:
    limiter = RateLimiter(min_size_to_sample=1, samples_per_insert=0, error_buffer=1,
                          max_insert_batch=1 << 20, max_sample_batch=1 << 20)
    return Table(capacity=capacity, obs_shape=SHAPE, obs_dtype=np.uint8, num_actions=3, prioritized=prioritized,
                 alpha=0.6, limiter=limiter, frames=True, frame_codec=codec)


NEEDS_LZ4 = pytest.mark.skipif(not available("lz4"), reason="lz4 is not installed")
CODECS = ["none", pytest.param("lz4", marks=NEEDS_LZ4)]


def insert_all(table: Table, actors: list[SimActor], rounds: int, steps_per_round: int,
               after_round=lambda: None) -> dict[int, dict]:
    """Interleave the actors' messages into `table`; returns key -> naive transition."""
    by_key: dict[int, dict] = {}
    for _ in range(rounds):
        after_round()  # e.g. the server loop's snapshot upkeep between messages
        for actor in actors:
            for msg, naive in actor.messages(steps_per_round):
                first, stored = table.insert_frames(msg)
                assert stored == len(msg.action), "every frame was sent: nothing may be missing"
                for i in range(stored):
                    by_key[first + i] = {k: v[i] for k, v in naive.items()}
    return by_key


def assert_live_match(table: Table, by_key: dict[int, dict]) -> int:
    store = table.storage
    keys = np.arange(store.oldest, store.inserted)
    got = store.gather(keys % store.capacity)
    for i, key in enumerate(keys):
        for field in m.TRANSITION_FIELDS:
            assert np.array_equal(got[field][i], by_key[int(key)][field]), (int(key), field)
    return len(keys)


@pytest.mark.parametrize("codec", CODECS)
def test_stacks_are_rebuilt_exactly_across_episodes_and_actors(codec):
    table = make_table(capacity=5000, codec=codec)
    actors = [SimActor(0, envs=3, seed=1), SimActor(1, envs=2, seed=2)]
    by_key = insert_all(table, actors, rounds=6, steps_per_round=25)
    assert table.size == len(by_key) > 500
    assert assert_live_match(table, by_key) == len(by_key)
    # Episode ends happened (terminal and truncated), and frames were shared: fewer frames
    # than transitions x 2k, close to one per step.
    discounts = np.array([t["discount"] for t in by_key.values()])
    assert (discounts == 0).any() and (discounts > 0.9 ** 3 + 1e-6).any()  # terminal; truncated (g^m, m < n)
    assert table.storage.frames_written < 1.6 * len(by_key)


@pytest.mark.parametrize("prioritized,codec", [(False, "none"), (True, "none"), pytest.param(True, "lz4", marks=NEEDS_LZ4)])
def test_wrap_around_evicts_transitions_before_their_frames(monkeypatch, prioritized, codec):
    # No spare frames: the frame ring (capacity + capacity/25) wraps before the transition
    # ring does, so transitions leave because their frames are overwritten.
    monkeypatch.setattr(frame_store, "FRAME_MARGIN", 0)
    table = make_table(capacity=300, prioritized=prioritized, codec=codec)
    actors = [SimActor(0, envs=4, seed=3, keyframe_every=5), SimActor(1, envs=3, seed=4)]
    by_key = insert_all(table, actors, rounds=12, steps_per_round=20)
    store = table.storage
    assert store.frames_written > 3 * store.num_frames, "the frame ring wrapped several times"
    assert store.oldest > store.inserted - store.capacity, "frames, not capacity, evicted the oldest"
    assert 0 < table.size <= store.capacity
    assert assert_live_match(table, by_key) == table.size
    # Sampling never returns an evicted transition, and what it returns is the naive one.
    batch = table.sample(64, beta=0.4, num_batches=8)
    assert (batch["keys"] >= store.oldest).all() and (batch["keys"] < store.inserted).all()
    for i, key in enumerate(batch["keys"]):
        assert np.array_equal(batch["obs"][i], by_key[int(key)]["obs"])
        assert np.array_equal(batch["next_obs"][i], by_key[int(key)]["next_obs"])
    if prioritized:
        leaves = table.tree.state()
        live_slots = np.arange(store.oldest, store.inserted) % store.capacity
        dead = np.ones(store.capacity, bool)
        dead[live_slots] = False
        assert (leaves[dead] == 0).all() and (leaves[live_slots] > 0).all()
        assert table.update_priorities(np.array([store.oldest - 1, store.oldest]), np.array([5.0, 5.0],
                                                                                             np.float32)) == 1


@pytest.mark.parametrize("codec", CODECS)
def test_snapshot_round_trip_and_streams_after_a_restore(tmp_path, monkeypatch, codec):
    monkeypatch.setattr(frame_files, "CHUNK_FRAMES", 64)
    table = make_table(capacity=2000, prioritized=True, codec=codec)
    snapshots = SnapshotStore(tmp_path)
    actor = SimActor(0, envs=3, seed=5, keyframe_every=6)
    by_key = insert_all(table, [actor], rounds=4, steps_per_round=20, after_round=lambda: snapshots.keep_up(table))
    snapshots.save(table)
    restored = make_table(capacity=2000, prioritized=True, codec=codec)
    SnapshotStore(tmp_path).load_latest(restored)
    assert restored.size == table.size and restored.total_priority == pytest.approx(table.total_priority)
    assert assert_live_match(restored, by_key) == table.size
    # The actor goes on: its next stacks continue frames the restored server never saw the
    # numbers of, so those transitions are dropped and counted until each env's whole stack.
    dropped = 0
    for msg, naive in actor.messages(20):
        first, stored = restored.insert_frames(msg)
        dropped += len(msg.action) - stored
    assert dropped > 0 and restored.storage.frames_missing == dropped
    later = actor.messages(10)
    for msg, naive in later:  # keyframes every 6 steps: everything resolves again
        first, stored = restored.insert_frames(msg)
        assert stored == len(msg.action)
        by_key.update({first + i: {k: v[i] for k, v in naive.items()} for i in range(stored)})
    keys = np.arange(restored.storage.inserted - sum(len(x.action) for x, _ in later), restored.storage.inserted)
    got = restored.storage.gather(keys % restored.storage.capacity)
    for i, key in enumerate(keys):
        assert np.array_equal(got["obs"][i], by_key[int(key)]["obs"])


def test_frames_go_to_disk_as_chunks_fill_and_a_snapshot_writes_only_the_last(tmp_path, monkeypatch):
    monkeypatch.setattr(frame_files, "CHUNK_FRAMES", 50)
    table = make_table(capacity=3000)
    snapshots = SnapshotStore(tmp_path)
    by_key = insert_all(table, [SimActor(0, envs=4, seed=8), SimActor(1, envs=2, seed=9)], rounds=5,
                        steps_per_round=15, after_round=lambda: snapshots.keep_up(table))
    snapshots.keep_up(table)  # as the server loop does after each turn
    written = table.storage.frames_written
    chunks = sorted((tmp_path / "frames").glob("chunk-*.npy"))
    assert len(chunks) == written // 50, "every filled chunk is on disk before any snapshot"
    snapshots.save(table)
    partials = list((tmp_path / "frames").glob("partial-*.npy"))
    assert len(partials) == (1 if written % 50 else 0) and len(list((tmp_path / "frames").glob("chunk-*"))) == len(chunks)
    assert np.load(partials[0]).shape[0] == written % 50
    # A lost chunk: the transitions that need its frames (or older ones) are dropped at the
    # restore; every one kept is still exact.
    chunks[2].unlink()
    restored = make_table(capacity=3000)
    SnapshotStore(tmp_path).load_latest(restored)
    assert 0 < restored.size < table.size
    assert restored.storage.oldest > table.storage.oldest
    assert assert_live_match(restored, by_key) == restored.size
    # A table that was not restored from this folder never reads its frames as its own.
    fresh = make_table(capacity=3000)
    SnapshotStore(tmp_path).keep_up(fresh)
    assert not list((tmp_path / "frames").glob("*.npy"))


def test_whole_stacks_go_into_a_frame_table_too():
    table = make_table(capacity=100)
    rng = np.random.default_rng(0)
    obs, nxt = (rng.integers(0, 256, (10, *SHAPE), dtype=np.uint8) for _ in range(2))
    batch = {"obs": obs, "next_obs": nxt, "action": np.ones(10, np.int32), "reward": np.zeros(10, np.float32),
             "discount": np.full(10, 0.9, np.float32)}
    table.insert(batch)
    table.insert(batch)
    got = table.storage.gather(np.arange(20) % 100)
    assert np.array_equal(got["obs"], np.concatenate([obs, obs])) and np.array_equal(got["next_obs"][10:], nxt)


def test_links_that_cannot_be_right_are_refused_and_nothing_is_stored():
    table = make_table(capacity=100)
    actor = SimActor(0, envs=2, seed=6)
    (msg, _), *_ = actor.messages(5)
    before = (table.size, table.storage.frames_written)
    bad = [msg._replace(obs_frame=msg.obs_frame + 10_000),                       # a frame never sent
           msg._replace(frame_prev=np.arange(len(msg.frames)) + msg.frame_first),  # links to itself
           msg._replace(frame_prev=msg.frame_prev[:-1]),                          # links and frames disagree
           msg._replace(action=np.full_like(msg.action, 7))]                      # a bad action
    for wrong in bad:
        with pytest.raises(RequestError):
            table.insert_frames(wrong)
        assert (table.size, table.storage.frames_written) == before
    table.insert_frames(msg)
    with pytest.raises(RequestError, match="restart"):
        table.insert_frames(msg)  # the same numbers again within one stream


def test_the_wire_carries_each_new_frame_once():
    actor = SimActor(0, envs=8, seed=7, keyframe_every=10_000)
    actor.messages(5)  # past the first whole stacks
    msgs = actor.messages(40, max_transitions=10_000)
    frames = sum(len(msg.frames) for msg, _ in msgs)
    transitions = sum(len(msg.action) for msg, _ in msgs)
    episodes = sum(int((naive["discount"] == 0).sum()) for _, naive in msgs)  # about one whole stack each
    assert frames <= 40 * 8 + (K - 1) * 2 * (episodes + 8), (frames, transitions, episodes)
    schemas = m.replay_schemas(SHAPE, np.uint8)
    msg = msgs[0][0]
    wire = m.pack(schemas[m.INSERT_FRAMES], msg)
    back = m.unpack(m.InsertFrames, decode(wire, schemas))
    assert np.array_equal(back.frames, msg.frames) and np.array_equal(back.next_frame, msg.next_frame)
    frame_bytes = sum(len(memoryview(f)) for f in wire if len(memoryview(f)) >= H * W)
    assert frame_bytes < len(msg.frames) * H * W + 64 * len(msg.action) + 4096


def test_atari_sized_transitions_fit_the_target():
    # 84x84x4 Atari stacks: <= 7.5 KB per stored transition (one frame is 7,056 bytes).
    per = frame_store.stored_bytes(1_000_000, (4, 84, 84)) / 1_000_000
    assert 7_056 < per <= 7_500, per
    table = Table(capacity=2_000, obs_shape=(4, 84, 84), obs_dtype=np.uint8, num_actions=6, prioritized=True,
                  alpha=0.6, limiter=RateLimiter(min_size_to_sample=1, samples_per_insert=0, error_buffer=1,
                                                 max_insert_batch=4096, max_sample_batch=4096), frames=True)
    assert table.storage.nbytes == frame_store.stored_bytes(2_000, (4, 84, 84))


@NEEDS_LZ4
def test_lz4_frames_take_a_fraction_of_the_memory_and_come_back_exact():
    # Game-like frames: a flat background with a few objects (real Atari frames compress ~25x).
    limiter = RateLimiter(min_size_to_sample=1, samples_per_insert=0, error_buffer=1,
                          max_insert_batch=1 << 20, max_sample_batch=1 << 20)
    plain, packed = (Table(capacity=1000, obs_shape=(4, 84, 84), obs_dtype=np.uint8, num_actions=6, prioritized=True,
                           alpha=0.6, limiter=limiter, frames=True, frame_codec=codec) for codec in ("none", "lz4"))
    rng = np.random.default_rng(0)
    obs = np.full((200, 4, 84, 84), 87, np.uint8)
    for i in range(200):
        y, x = rng.integers(0, 76, 2)
        obs[i, :, y:y + 8, x:x + 4] = 236
    batch = {"obs": obs, "next_obs": obs[::-1].copy(), "action": np.zeros(200, np.int32),
             "reward": np.zeros(200, np.float32), "discount": np.ones(200, np.float32)}
    plain.insert(batch)
    packed.insert(batch)
    got = packed.storage.gather(np.arange(200))
    assert np.array_equal(got["obs"], obs) and np.array_equal(got["next_obs"], obs[::-1])
    store = packed.storage
    per_frame = store.blob_bytes.sum() / store.frames_written
    assert per_frame < 84 * 84 / 10, per_frame
    # What the table reports holding counts those bytes, not the uncompressed frames.
    arrays = plain.storage.nbytes - plain.storage.frames.nbytes
    held = store.nbytes - arrays - store.blobs.nbytes - store.blob_bytes.nbytes
    assert held == store.blob_bytes.sum() + store.frames_written * 33


def test_a_frame_server_over_sockets_snapshots_and_restores(tmp_path, monkeypatch):
    """The real server and client: InsertFrames over ZeroMQ, frames written to disk as
    chunks fill (the server loop), a snapshot request, and a new server restoring it; what
    either samples is the naive transition of its key."""
    import threading

    from qfleet.common.config import ReplayConfig
    from qfleet.common.envs import EnvSpec
    from qfleet.replay_server.build import build_replay_server
    from qfleet.replay_server.client import ReplayClient

    monkeypatch.setattr(frame_files, "CHUNK_FRAMES", 64)
    cfg = ReplayConfig(capacity=2000, min_size_to_sample=1, samples_per_insert=0.0, snapshot_every_s=0)
    spec = EnvSpec("FrameStacks", SHAPE, np.dtype(np.uint8), 3, None, None)

    def serve(server, stop):
        thread = threading.Thread(target=server.serve, args=(stop.is_set, 0.01), daemon=True)
        thread.start()
        return thread

    server, stop = build_replay_server(cfg, spec, max_sample_batch=256, snapshot_dir=tmp_path), threading.Event()
    thread = serve(server, stop)
    client = ReplayClient(obs_shape=SHAPE, obs_dtype=np.uint8, insert_endpoint=server.insert_endpoint,
                          request_endpoint=server.request_endpoint, timeout=10)
    by_key, key = {}, 0
    for msg, naive in SimActor(0, envs=3, seed=11).messages(60):
        client.insert(msg, timeout=10)
        for i in range(len(msg.action)):
            by_key[key + i] = {k: v[i] for k, v in naive.items()}
        key += len(msg.action)
    for _ in range(6000):  # a hang guard (60 s), not a budget: it ends as soon as all are stored
        if client.stats()["stored"] == key:
            break
        threading.Event().wait(0.01)
    assert client.stats()["stored"] == key and client.stats()["frames_missing"] == 0
    assert list((tmp_path / "frames").glob("chunk-*.npy")), "full chunks went to disk before any snapshot"

    def check(batch):
        for i, k in enumerate(batch.keys):
            assert np.array_equal(batch.obs[i], by_key[int(k)]["obs"])
            assert np.array_equal(batch.next_obs[i], by_key[int(k)]["next_obs"])

    check(client.sample(64, num_batches=2))
    client.snapshot()
    stop.set()
    thread.join(5)
    client.close()
    server.close()

    again, stop = build_replay_server(cfg, spec, max_sample_batch=256, snapshot_dir=tmp_path), threading.Event()
    assert again.restore() is not None and again.table.size == key
    thread = serve(again, stop)
    client = ReplayClient(obs_shape=SHAPE, obs_dtype=np.uint8, request_endpoint=again.request_endpoint, timeout=10)
    try:
        check(client.sample(64, num_batches=2))
    finally:
        stop.set()
        thread.join(5)
        client.close()
        again.close()


def test_a_snapshot_is_refused_by_a_table_of_the_other_kind(tmp_path):
    from qfleet.common.errors import CheckpointError
    from qfleet.replay_server.snapshot import check_newest

    table = make_table(capacity=200)
    insert_all(table, [SimActor(0, envs=2, seed=12)], rounds=1, steps_per_round=10)
    SnapshotStore(tmp_path).save(table)
    assert check_newest(tmp_path, SHAPE, np.uint8, 200, frames=True) is not None
    with pytest.raises(CheckpointError, match="replay.frames=true"):
        check_newest(tmp_path, SHAPE, np.uint8, 200, frames=False)
    with pytest.raises(CheckpointError, match="shape"):
        check_newest(tmp_path, (3, H, W), np.uint8, 200, frames=True)
    whole = Table(capacity=200, obs_shape=SHAPE, obs_dtype=np.uint8, num_actions=3, prioritized=False, alpha=0.6,
                  limiter=table.limiter)
    with pytest.raises(CheckpointError, match="stores a frame at a time"):
        SnapshotStore(tmp_path).load_latest(whole)
