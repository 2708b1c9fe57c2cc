"""Wire codec: a msgpack header frame plus one raw frame per numpy array.

    frame 0: msgpack {"t": type, "v": schema version, "m": metadata, "a": [[name, dtype, shape], ...]}
    frame 1..N: the raw bytes of each array, in header order (C order, little endian)

Encoding hands numpy buffers to ZeroMQ without copying; decoding wraps the received
frames with `np.frombuffer` (read-only views, no copy). Nothing is ever unpickled:
msgpack is decoded with strict limits and every field is checked against the message
type's `MessageSchema` before the caller sees it. Anything else raises `CodecError`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Sequence

import msgpack
import numpy as np

from qfleet.common.errors import CodecError

MAX_HEADER_BYTES = 64 * 1024
BATCH = "B"  # marks the leading dimension that all batched arrays of a message share


@dataclass(frozen=True)
class ArraySpec:
    """One array of a message: dtype, shape (ints, or BATCH for the shared batch size)."""

    name: str
    dtype: str
    shape: tuple
    finite: bool = True
    optional: bool = False


@dataclass(frozen=True)
class MessageSchema:
    """What one message type may carry. `meta` maps key -> (allowed types, required)."""

    type: str
    version: int
    meta: Mapping[str, tuple[tuple[type, ...], bool]] = field(default_factory=dict)
    arrays: tuple[ArraySpec, ...] = ()
    max_batch: int = 1 << 20
    open_meta: bool = False  # True: extra keys with scalar/str values are allowed (stats, reports)


class Message(NamedTuple):
    type: str
    meta: dict
    arrays: dict  # name -> read-only np.ndarray


def encode(schema: MessageSchema, meta: Mapping[str, Any] | None = None,
           arrays: Mapping[str, np.ndarray] | None = None) -> list:
    """Frames for `send_multipart(frames, copy=False)`.

    The sender only checks names and metadata and casts arrays to the schema dtypes; the
    receiver validates everything (shapes, batch sizes, finiteness), so hot paths do not
    pay for validation twice and a sender bug still cannot get past the receiver.
    """
    meta = dict(meta or {})
    arrays = dict(arrays or {})
    _check_meta(schema, meta)
    entries, buffers = [], []
    for spec in schema.arrays:
        if spec.name not in arrays:
            if spec.optional:
                continue
            raise CodecError("missing_array", f"{schema.type}: array '{spec.name}' is required")
        arr = np.ascontiguousarray(arrays[spec.name], dtype=np.dtype(spec.dtype))
        entries.append([spec.name, arr.dtype.str, list(arr.shape)])
        buffers.append(arr)
    extra = set(arrays) - {s.name for s in schema.arrays}
    if extra:
        raise CodecError("unknown_array", f"{schema.type}: unexpected arrays {sorted(extra)}")
    header = msgpack.packb({"t": schema.type, "v": schema.version, "m": meta, "a": entries},
                           use_bin_type=True)
    return [header] + buffers


def decode(frames: Sequence[Any], schemas: Mapping[str, MessageSchema],
           max_bytes: int = 64 * 1024 * 1024, check_finite: bool = True) -> Message:
    """Validate and decode a multipart message into a `Message` of read-only array views."""
    if not frames:
        raise CodecError("empty", "message has no frames")
    views = [_view(f) for f in frames]
    total = sum(v.nbytes for v in views)
    if total > max_bytes:
        raise CodecError("oversized", f"message is {total} bytes, the limit is {max_bytes}")
    if views[0].nbytes > MAX_HEADER_BYTES:
        raise CodecError("oversized", f"header is {views[0].nbytes} bytes, the limit is {MAX_HEADER_BYTES}")
    header = _unpack_header(views[0])
    mtype, version, meta, entries = header.get("t"), header.get("v"), header.get("m"), header.get("a")
    if not isinstance(mtype, str) or mtype not in schemas:
        raise CodecError("unknown_type", f"message type {mtype!r} is not one of {sorted(schemas)}")
    schema = schemas[mtype]
    if version != schema.version or isinstance(version, bool):
        raise CodecError("bad_version", f"{mtype}: schema version {version!r}, expected {schema.version}")
    if not isinstance(meta, dict):
        raise CodecError("bad_meta", f"{mtype}: metadata must be a map")
    _check_meta(schema, meta)
    if not isinstance(entries, list) or len(entries) != len(views) - 1:
        raise CodecError("bad_frames", f"{mtype}: header lists {len(entries) if isinstance(entries, list) else '?'} "
                                       f"arrays but {len(views) - 1} data frames arrived")
    arrays = _decode_arrays(schema, entries, views[1:], check_finite)
    return Message(mtype, meta, arrays)


def _view(frame: Any) -> memoryview:
    buf = getattr(frame, "buffer", frame)  # zmq.Frame (copy=False) or bytes-like
    try:
        view = memoryview(buf)
    except TypeError:
        raise CodecError("bad_frames", f"frame of type {type(frame).__name__} is not a buffer") from None
    return view.cast("B") if view.ndim != 1 or view.format != "B" else view


def _unpack_header(view: memoryview) -> dict:
    try:
        header = msgpack.unpackb(view, raw=False, strict_map_key=True, use_list=True,
                                 max_str_len=4096, max_bin_len=4096, max_array_len=4096,
                                 max_map_len=1024, max_ext_len=0)
    except Exception as exc:  # msgpack raises many types on garbage; all mean the same
        raise CodecError("bad_header", f"header is not valid msgpack ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise CodecError("bad_header", "header must be a msgpack map")
    return header


def _check_meta(schema: MessageSchema, meta: Mapping[str, Any]) -> None:
    for key, (types, required) in schema.meta.items():
        if key not in meta:
            if required:
                raise CodecError("bad_meta", f"{schema.type}: metadata '{key}' is required")
            continue
        value = meta[key]
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            raise CodecError("bad_meta", f"{schema.type}: metadata '{key}' has type {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise CodecError("not_finite", f"{schema.type}: metadata '{key}' is {value}")
    for key, value in meta.items():
        if key in schema.meta:
            continue
        if not schema.open_meta:
            raise CodecError("bad_meta", f"{schema.type}: unexpected metadata '{key}'")
        if not isinstance(key, str) or not isinstance(value, (int, float, str, bool, type(None))):
            raise CodecError("bad_meta", f"{schema.type}: metadata '{key}' must be a scalar")
        if isinstance(value, float) and not math.isfinite(value):
            raise CodecError("not_finite", f"{schema.type}: metadata '{key}' is {value}")


def _decode_arrays(schema: MessageSchema, entries: list, views: list, check_finite: bool) -> dict:
    specs = {s.name: s for s in schema.arrays}
    arrays: dict[str, np.ndarray] = {}
    batch: int | None = None
    for entry, view in zip(entries, views):
        if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
                and isinstance(entry[1], str) and isinstance(entry[2], list)):
            raise CodecError("bad_header", f"{schema.type}: array entry must be [name, dtype, shape]")
        name, dtype_str, shape = entry
        spec = specs.get(name)
        if spec is None or name in arrays:
            raise CodecError("unknown_array", f"{schema.type}: unexpected or repeated array '{name}'")
        expected = np.dtype(spec.dtype)
        if dtype_str != expected.str:
            raise CodecError("bad_dtype", f"{schema.type}.{name}: dtype {dtype_str!r}, expected {expected.str!r}")
        if len(shape) != len(spec.shape) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                     for d in shape):
            raise CodecError("bad_shape", f"{schema.type}.{name}: shape {shape}, expected {_shape_text(spec.shape)}")
        for got, want in zip(shape, spec.shape):
            if want == BATCH:
                if batch is None:
                    batch = got
                if got != batch or got > schema.max_batch:
                    raise CodecError("bad_shape", f"{schema.type}.{name}: batch size {got} "
                                                  f"(others {batch}, limit {schema.max_batch})")
            elif want is not None and got != want:
                raise CodecError("bad_shape", f"{schema.type}.{name}: shape {shape}, expected {_shape_text(spec.shape)}")
        if view.nbytes != math.prod(shape) * expected.itemsize:
            raise CodecError("bad_frames", f"{schema.type}.{name}: {view.nbytes} bytes for shape {shape}")
        arr = np.frombuffer(view, dtype=expected).reshape(shape)
        if check_finite and spec.finite and expected.kind == "f" and not np.isfinite(arr).all():
            raise CodecError("not_finite", f"{schema.type}.{name}: contains NaN or inf")
        arrays[name] = arr
    missing = [s.name for s in schema.arrays if not s.optional and s.name not in arrays]
    if missing:
        raise CodecError("missing_array", f"{schema.type}: missing arrays {missing}")
    return arrays


def _shape_text(shape: tuple) -> str:
    return "(" + ", ".join("batch" if d == BATCH else ("any" if d is None else str(d)) for d in shape) + ")"
