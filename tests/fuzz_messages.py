"""Hypothesis strategies for malformed messages: random bytes, and valid messages with one
defect each (truncated or extra frames, wrong type or version, bad metadata, wrong dtype
or shape, short or long data frames, NaN/inf, out-of-range content, oversized). Every
generated message must be rejected: none of the mutations can produce a valid one."""
from __future__ import annotations

import msgpack
import numpy as np
from hypothesis import strategies as st

NON_FINITE = [float("nan"), float("inf"), float("-inf")]
INT64 = st.integers(-2**63, 2**63 - 1)  # what msgpack can carry
OTHER_DTYPES = ["<f8", "<f2", "<i8", "<i2", "|u1", "|b1", "<u4", ">f4", "<c8"]


def wire(frames) -> list[bytes]:
    return [bytes(memoryview(f).cast("B")) for f in frames]


def _header(frames):
    return msgpack.unpackb(frames[0])


def _with_header(frames, header):
    return [msgpack.packb(header)] + list(frames[1:])


def random_frames():
    return st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=7)


@st.composite
def defective(draw, valid: list[bytes], required_meta: tuple[str, ...], float_arrays: tuple[str, ...],
              oversized_bytes: int, semantic: dict, other_type: list[bytes]):
    """One defect applied to a valid message (`semantic`: array name -> bad values)."""
    header = _header(valid)
    entries = header["a"]
    kind = draw(st.sampled_from(["random", "truncate", "extra", "type", "version", "meta_drop", "meta_type",
                                 "meta_extra", "dtype", "shape", "frame_bytes", "nonfinite", "semantic",
                                 "oversized", "other_type", "not_a_map"]))
    if kind in ("random", "truncate"):
        return draw(random_frames())
    if kind == "truncate" and len(valid) > 1:
        return valid[:draw(st.integers(1, len(valid) - 1))]
    if kind == "extra":
        return valid + draw(st.lists(st.binary(max_size=64), min_size=1, max_size=3))
    if kind == "type":
        return _with_header(valid, {**header, "t": draw(st.text(max_size=12).filter(lambda t: t != header["t"])
                                                         | INT64 | st.none())})
    if kind == "version":
        return _with_header(valid, {**header, "v": draw(st.integers(-3, 2**31).filter(lambda v: v != 1)
                                                         | st.text(max_size=3) | st.just(True))})
    if kind == "meta_drop" and required_meta:
        meta = dict(header["m"])
        del meta[draw(st.sampled_from(required_meta))]
        return _with_header(valid, {**header, "m": meta})
    if kind == "meta_type" and required_meta:
        key = draw(st.sampled_from(required_meta))
        bad = draw(st.text(max_size=4) | st.lists(INT64, max_size=2) | st.none() | st.just([1.5]))
        return _with_header(valid, {**header, "m": {**header["m"], key: bad}})
    if kind == "meta_extra":
        return _with_header(valid, {**header, "m": {**header["m"], "zz_" + draw(st.text(max_size=6)): [1]}})
    if kind in ("dtype", "shape", "frame_bytes") and entries:
        i = draw(st.integers(0, len(entries) - 1))
        entries = [list(e) for e in entries]
        frames = list(valid)
        if kind == "dtype":
            entries[i][1] = draw(st.sampled_from(OTHER_DTYPES).filter(lambda d: d != entries[i][1]))
        elif kind == "shape":
            entries[i][2] = draw(st.lists(st.integers(0, 70), min_size=0, max_size=3).filter(
                lambda s: s != entries[i][2]))
        else:
            cut = draw(st.integers(-len(frames[i + 1]), 16).filter(lambda c: c != 0))
            frames[i + 1] = frames[i + 1][:cut] if cut < 0 else frames[i + 1] + b"\x00" * cut
        return _with_header(frames, {**header, "a": entries})
    if kind == "nonfinite" and float_arrays:
        return _set_values(valid, header, draw(st.sampled_from(float_arrays)),
                           draw(st.sampled_from(NON_FINITE)), draw(st.integers(0, 1 << 16)))
    if kind == "semantic" and semantic:
        name = draw(st.sampled_from(sorted(semantic)))
        return _set_values(valid, header, name, draw(st.sampled_from(semantic[name])), draw(st.integers(0, 1 << 16)))
    if kind == "oversized":
        return valid + [b"\x00" * oversized_bytes]
    if kind == "other_type":
        return other_type
    return [msgpack.packb(draw(st.lists(INT64, max_size=3) | st.text(max_size=5)))] + valid[1:]


def _set_values(valid, header, name, value, position):
    names = [e[0] for e in header["a"]]
    if name not in names:
        return [b"not msgpack \xc1"]
    i = names.index(name)
    entry = header["a"][i]
    arr = np.frombuffer(valid[i + 1], dtype=np.dtype(entry[1])).copy()
    arr.reshape(-1)[position % max(1, arr.size)] = value
    frames = list(valid)
    frames[i + 1] = arr.tobytes()
    return frames
