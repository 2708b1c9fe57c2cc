"""Codec: round trips for every message type, and rejection of every kind of bad input."""
import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qfleet.common import messages as m
from qfleet.common.codec import decode
from qfleet.common.errors import CodecError
from tests.conftest import make_batch

SCHEMAS = m.replay_schemas((4,), np.float32)
PARAMS = {"torso.0.weight": (8, 4), "torso.0.bias": (8,), "head.weight": (2, 8), "head.bias": (2,)}
WEIGHTS = m.weights_schema(PARAMS)
ALL = {**SCHEMAS, m.WEIGHTS: WEIGHTS, m.REPORT: m.REPORT_SCHEMA}


def sample_batch(n=6):
    b = make_batch(n)
    return m.SampleBatch(3, np.arange(n, dtype=np.int64), b.obs, b.action, b.reward, b.next_obs, b.discount,
                         np.ones(n, np.float32), np.full(n, 0.125), 8.0, 8)


EXAMPLES = [
    (m.InsertBatch, make_batch(5)),
    (m.InsertBatch, make_batch(5)._replace(priority=np.full(5, 2.0, np.float32))),
    (m.SampleRequest, m.SampleRequest(1, 256, 0.4, 2)),
    (m.SampleBatch, sample_batch()),
    (m.PriorityUpdate, m.PriorityUpdate(np.arange(3, dtype=np.int64), np.ones(3, np.float32))),
    (m.StatsRequest, m.StatsRequest(9)),
    (m.SnapshotRequest, m.SnapshotRequest(10)),
    (m.StatsReply, m.StatsReply(9, {"size": 5, "rate": 1.5, "path": "/x", "held": False})),
    (m.ErrorReply, m.ErrorReply(2, "rate_limited", "wait")),
    (m.Weights, m.Weights(7, 123.5, {k: np.random.default_rng(0).standard_normal(s).astype(np.float32)
                                      for k, s in PARAMS.items()}, epoch=2)),
    (m.Report, m.Report("actor", 1, {"env_steps": 10, "eps": 0.1}, np.array([1.0, 2.0], np.float32),
                        np.array([5, 6], np.int32))),
]
TYPE_OF = {m.InsertBatch: m.INSERT, m.SampleRequest: m.SAMPLE, m.SampleBatch: m.SAMPLE_BATCH,
           m.PriorityUpdate: m.PRIORITIES, m.StatsRequest: m.STATS, m.SnapshotRequest: m.SNAPSHOT,
           m.StatsReply: m.STATS_REPLY, m.ErrorReply: m.ERROR, m.Weights: m.WEIGHTS, m.Report: m.REPORT}


def assert_same(a, b):
    assert type(a) is type(b)
    for x, y in zip(a, b):
        if isinstance(x, dict):
            assert x.keys() == y.keys()
            for k in x:
                np.testing.assert_array_equal(x[k], y[k])
        elif isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            np.testing.assert_array_equal(x, y)
        else:
            assert x == y


@pytest.mark.parametrize("cls,msg", EXAMPLES, ids=[type(e[1]).__name__ for e in EXAMPLES])
def test_round_trip(cls, msg):
    frames = m.pack(ALL[TYPE_OF[cls]], msg)
    # bytes on the wire, as ZeroMQ delivers them
    wire = [bytes(memoryview(f).cast("B")) for f in frames]
    assert_same(m.decode_as(cls, wire, ALL), msg)


def test_transition_messages_carry_the_transition_fields_in_order():
    for cls in (m.InsertBatch, m.SampleBatch):
        start = cls._fields.index(m.TRANSITION_FIELDS[0])
        assert cls._fields[start:start + len(m.TRANSITION_FIELDS)] == m.TRANSITION_FIELDS, cls.__name__
    arrays = [s.name for s in m.replay_schemas((4,), np.float32)[m.INSERT].arrays]
    assert tuple(arrays[:len(m.TRANSITION_FIELDS)]) == m.TRANSITION_FIELDS


def test_decoded_arrays_are_views_not_copies():
    frames = m.pack(SCHEMAS[m.INSERT], make_batch(4))
    wire = [bytearray(memoryview(f).cast("B")) for f in frames]
    msg = decode(wire, SCHEMAS)
    assert np.shares_memory(msg.arrays["obs"], np.frombuffer(wire[1], np.uint8))


def good_frames():
    return [bytes(memoryview(f).cast("B")) for f in m.pack(SCHEMAS[m.INSERT], make_batch(4))]


def header_with(**changes):
    frames = good_frames()
    header = msgpack.unpackb(frames[0])
    header.update(changes)
    return [msgpack.packb(header)] + frames[1:]


BAD = {
    "empty": [],
    "random_bytes": [b"\x93\x01\x02"],
    "not_a_map": [msgpack.packb([1, 2, 3])],
    "unknown_type": header_with(t="drop_tables"),
    "wrong_version": header_with(v=2),
    "bool_version": header_with(v=True),
    "missing_meta": header_with(m={"actor_id": 1, "seq": 1}),
    "wrong_meta_type": header_with(m={"actor_id": "1", "seq": 1, "weights_version": 0}),
    "extra_meta": header_with(m={"actor_id": 1, "seq": 1, "weights_version": 0, "evil": 1}),
    "truncated_frames": good_frames()[:-1],
    "extra_frame": good_frames() + [b"\x00" * 16],
    "short_frame": good_frames()[:1] + [good_frames()[1][:-4]] + good_frames()[2:],
}


def sample_header_with(**changes):
    frames = [bytes(memoryview(f).cast("B")) for f in m.pack(SCHEMAS[m.SAMPLE_BATCH], sample_batch())]
    header = msgpack.unpackb(frames[0])
    header.update(changes)
    return [msgpack.packb(header)] + frames[1:]


@pytest.mark.parametrize("change", [
    dict(v=1),  # a sample batch of the schema before shards carried their totals
    dict(m={"request_id": 3, "size": 8}),
    dict(m={"request_id": 3, "total_priority": "8", "size": 8}),
    dict(m={"request_id": 3, "total_priority": float("nan"), "size": 8}),
    dict(m={"request_id": 3, "total_priority": 8.0, "size": 8.5}),
], ids=["old_version", "no_total", "total_type", "total_nan", "size_type"])
def test_sample_batch_must_carry_its_shard_totals(change):
    with pytest.raises(CodecError):
        decode(sample_header_with(**change), SCHEMAS)


@pytest.mark.parametrize("name", list(BAD))
def test_rejects_malformed(name):
    with pytest.raises(CodecError):
        decode(BAD[name], SCHEMAS)


def insert_with(**arrays):
    b = make_batch(4)._asdict()
    b.update(arrays)
    header = {"t": m.INSERT, "v": 1, "m": {"actor_id": 0, "seq": 0, "weights_version": 0},
              "a": [[k, np.asarray(v).dtype.str, list(np.shape(v))] for k, v in b.items() if isinstance(v, np.ndarray)]}
    return [msgpack.packb(header)] + [np.ascontiguousarray(v).tobytes() for v in b.values() if isinstance(v, np.ndarray)]


@pytest.mark.parametrize("arrays,reason", [
    (dict(obs=np.zeros((4, 4), np.float64)), "bad_dtype"),
    (dict(action=np.zeros(4, np.int64)), "bad_dtype"),
    (dict(obs=np.zeros((4, 5), np.float32)), "bad_shape"),
    (dict(obs=np.zeros((4, 2, 2), np.float32)), "bad_shape"),
    (dict(reward=np.zeros(3, np.float32)), "bad_shape"),
    (dict(reward=np.array([0, np.nan, 0, 0], np.float32)), "not_finite"),
    (dict(next_obs=np.full((4, 4), np.inf, np.float32)), "not_finite"),
])
def test_rejects_wrong_arrays(arrays, reason):
    with pytest.raises(CodecError) as info:
        decode(insert_with(**arrays), SCHEMAS)
    assert info.value.reason == reason


def test_rejects_oversized():
    frames = good_frames()
    with pytest.raises(CodecError) as info:
        decode(frames, SCHEMAS, max_bytes=sum(len(f) for f in frames) - 1)
    assert info.value.reason == "oversized"
    with pytest.raises(CodecError):
        decode([b"\x80" + b"\x00" * 70_000], SCHEMAS)


def test_rejects_batch_above_schema_limit():
    schemas = m.replay_schemas((4,), np.float32, max_batch=3)
    with pytest.raises(CodecError, match="batch size 4"):
        decode(good_frames(), schemas)


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=7))
def test_random_bytes_only_ever_raise_codec_error(frames):
    try:
        decode(frames, ALL)
    except CodecError:
        pass


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from(["t", "v", "m", "a", "x"]),
                       st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=8),
                                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c, max_size=4),
                                    max_leaves=10)))
def test_random_headers_only_ever_raise_codec_error(header):
    try:
        decode([msgpack.packb(header)] + good_frames()[1:], ALL)
    except CodecError:
        pass
