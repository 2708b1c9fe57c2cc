"""Redistributing replay snapshots over another shard count (a resume with a new
replay.shards): every stored transition arrives in exactly one new shard with its priority,
the new shards are even and each holds old and new transitions, the oldest go when the new
shards hold less, counters keep their sums, the rate limiters stay inside their windows,
the old files are kept, and an unreadable newest snapshot falls back to the previous one."""
import numpy as np
import pytest

from qfleet.common.errors import CheckpointError
from qfleet.replay_server.rate_limiter import RateLimiter
from qfleet.replay_server.reshard import Ratio, reshard
from qfleet.replay_server.snapshot import SnapshotStore, shard_dirs
from qfleet.replay_server.table import Table
from tests.conftest import make_batch

CAPACITY, ALPHA = 50, 0.6
RATIO = Ratio(samples_per_insert=2.0, min_size_to_sample=10, error_buffer=100.0)


def make_table(prioritized: bool) -> Table:
    lim = RateLimiter(min_size_to_sample=RATIO.min_size_to_sample, samples_per_insert=RATIO.samples_per_insert,
                      error_buffer=RATIO.error_buffer, max_insert_batch=10, max_sample_batch=20)
    return Table(capacity=CAPACITY, obs_shape=(4,), obs_dtype=np.float32, num_actions=2,
                 prioritized=prioritized, alpha=ALPHA, limiter=lim, seed=1)


def fill(table: Table, ids: np.ndarray) -> None:
    """Insert transitions whose reward is their id, priority 1 + id % 7, in messages of 10,
    sampling as the limiter allows (so its counters move)."""
    for chunk in np.array_split(ids, max(1, len(ids) // 10)):
        b = make_batch(len(chunk), seed=int(chunk[0]))
        table.insert({"obs": b.obs, "action": b.action, "reward": chunk.astype(np.float32),
                      "next_obs": b.next_obs, "discount": b.discount},
                     priority=(1.0 + chunk % 7).astype(np.float32))
        while table.can_sample(20):
            table.sample(20, 0.4)


def contents(table: Table) -> dict[int, float]:
    """id -> stored sampling mass (p ** alpha, or 1 for uniform replay)."""
    size = table.size
    ids = table.storage.arrays["reward"][:size].astype(int)
    mass = table.tree.state()[:size] if table.tree is not None else np.ones(size)
    return dict(zip(ids.tolist(), mass.tolist()))


def write_shards(replay, prioritized: bool, sizes=(80, 30)) -> list[Table]:
    tables = []
    for i, n in enumerate(sizes):
        table = make_table(prioritized)
        fill(table, np.arange(1000 * i, 1000 * i + n))
        SnapshotStore(shard_dirs(replay, len(sizes))[i]).save(
            table, {"stored_by_actor": {str(i): n}, "rejected": {"bad_action": i}, "counts": {"requests": 5}})
        tables.append(table)
    return tables


def load(replay, shards: int, prioritized: bool) -> list[tuple[Table, dict]]:
    out = []
    for d in shard_dirs(replay, shards):
        table = make_table(prioritized)
        path, meta = SnapshotStore(d).load_latest(table)
        assert path is not None, f"no snapshot in {d}"
        out.append((table, meta))
    return out


@pytest.mark.parametrize("prioritized", [True, False], ids=["prioritized", "uniform"])
def test_two_shards_become_three_with_every_transition_once(tmp_path, prioritized):
    replay = tmp_path / "replay"
    old = write_shards(replay, prioritized)
    before = {**contents(old[0]), **contents(old[1])}
    assert len(before) == 50 + 30  # shard 0 wrapped: its 30 oldest were overwritten

    done = reshard(replay, 2, 3, CAPACITY, RATIO)
    assert (done.transitions, done.dropped) == (80, 0)
    new = load(replay, 3, prioritized)
    after = [contents(t) for t, _ in new]
    merged = {k: v for part in after for k, v in part.items()}
    assert sum(len(part) for part in after) == len(merged) == len(before)  # each exactly once
    assert merged == pytest.approx(before)  # with its priority
    assert sorted(len(part) for part in after) == [26, 27, 27]
    for part in after:  # each new shard holds old and new rows of both old shards
        ids = np.array(sorted(part))
        assert (ids < 1000).any() and (ids >= 1000).any()
        assert min(ids[ids < 1000]) < 60 and max(ids[ids < 1000]) > 70

    # the counters keep their global sums; the limiters sit inside their windows
    assert sum(t.limiter.inserts for t, _ in new) == sum(t.limiter.inserts for t in old)
    assert sum(t.counts["stored"] for t, _ in new) == sum(t.counts["stored"] for t in old)
    assert new[0][1]["stored_by_actor"] == {"0": 80, "1": 30} and new[0][1]["rejected"] == {"bad_action": 1}
    assert new[0][1]["counts"] == {"requests": 10} and new[1][1] == {}
    offset = RATIO.samples_per_insert * RATIO.min_size_to_sample
    for t, _ in new:
        diff = t.limiter.inserts * RATIO.samples_per_insert - t.limiter.samples
        assert offset - RATIO.error_buffer <= diff <= offset + RATIO.error_buffer

    # nothing is deleted: the old snapshots are kept, out of the shards' way
    assert done.kept_in == replay / "resharded-2-to-3"
    assert sorted(p.parent.name for p in done.kept_in.rglob("replay-*.npz")) == ["shard-0", "shard-1"]
    assert not (replay / ".reshard-staging").exists()


def test_fewer_shards_keep_the_newest_and_the_samples_go_on(tmp_path):
    replay = tmp_path / "replay"
    write_shards(replay, True)
    done = reshard(replay, 2, 1, CAPACITY, RATIO)
    assert (done.transitions, done.dropped) == (50, 30)
    [(table, _)] = load(replay, 1, True)
    ids = set(contents(table))
    assert {79, 1029} <= ids and not {30, 1000} & ids  # the newest of each old shard in, the oldest out
    diff = table.limiter.inserts * RATIO.samples_per_insert - table.limiter.samples
    offset = RATIO.samples_per_insert * RATIO.min_size_to_sample
    assert offset - RATIO.error_buffer <= diff <= offset + RATIO.error_buffer  # clipped into its window
    assert not list((replay / "shard-0").glob("replay-*.npz"))
    assert len(list(done.kept_in.rglob("replay-*.npz"))) == 2


def test_one_shard_becomes_two_and_a_second_reshard_keeps_both_histories(tmp_path):
    replay = tmp_path / "replay"
    write_shards(replay, True, sizes=(40,))
    assert reshard(replay, 1, 2, CAPACITY, RATIO).transitions == 40
    assert not list(replay.glob("replay-*.npz"))  # replay/ itself is no shard any more
    assert sorted(len(contents(t)) for t, _ in load(replay, 2, True)) == [20, 20]
    done = reshard(replay, 2, 1, CAPACITY, RATIO)
    assert done.kept_in == replay / "resharded-2-to-1" and (replay / "resharded-1-to-2").is_dir()
    assert sorted(contents(load(replay, 1, True)[0][0])) == list(range(40))


def test_an_unreadable_newest_snapshot_falls_back_to_the_previous(tmp_path):
    replay = tmp_path / "replay"
    table = make_table(True)
    fill(table, np.arange(20))
    SnapshotStore(replay / "shard-0").save(table)
    fill(table, np.arange(20, 30))
    newest = SnapshotStore(replay / "shard-0").save(table)
    newest.write_bytes(b"not a zip")
    other = make_table(True)
    fill(other, np.arange(1000, 1010))
    SnapshotStore(replay / "shard-1").save(other)
    assert reshard(replay, 2, 1, CAPACITY, RATIO).transitions == 30
    assert sorted(contents(load(replay, 1, True)[0][0])) == list(range(20)) + list(range(1000, 1010))


def test_nothing_readable_is_refused_and_nothing_moves(tmp_path):
    replay = tmp_path / "replay"
    (replay / "shard-0").mkdir(parents=True)
    (replay / "shard-0" / "replay-000000000000010.npz").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="no readable replay snapshot"):
        reshard(replay, 2, 1, CAPACITY, RATIO)
    assert (replay / "shard-0" / "replay-000000000000010.npz").exists()


def test_frame_snapshots_are_not_redistributed_and_stay_where_they_are(tmp_path):
    # A frame table's snapshot keeps its frames in chunk files beside it; redistributing
    # those is not built, so another shard count is refused, naming the way out.
    replay = tmp_path / "replay"
    shape = (4, 6, 6)
    limiter = RateLimiter(min_size_to_sample=1, samples_per_insert=0, error_buffer=1, max_insert_batch=64,
                          max_sample_batch=64)
    for d in shard_dirs(replay, 2):
        table = Table(capacity=CAPACITY, obs_shape=shape, obs_dtype=np.uint8, num_actions=2, prioritized=True,
                      alpha=ALPHA, limiter=limiter, frames=True)
        obs = np.random.default_rng(0).integers(0, 256, (8, *shape), dtype=np.uint8)
        table.insert({"obs": obs, "next_obs": obs, "action": np.zeros(8, np.int32), "reward": np.zeros(8, np.float32),
                      "discount": np.ones(8, np.float32)})
        SnapshotStore(d).save(table)
    before = sorted(p.relative_to(replay) for p in replay.rglob("*"))
    with pytest.raises(CheckpointError, match="resume with replay.shards = 2"):
        reshard(replay, 2, 3, CAPACITY, RATIO)
    assert sorted(p.relative_to(replay) for p in replay.rglob("*")) == before
