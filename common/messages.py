"""Wire message schemas: one NamedTuple and one `MessageSchema` per message type.

Who sends what:
    actor   --InsertBatch-->     replay server (PUSH -> PULL)
    actor   --InsertFrames-->    replay server (PUSH -> PULL), for stacked-frame observations
    learner --SampleRequest-->   replay server (DEALER -> ROUTER), answered by SampleBatch
    learner --PriorityUpdate-->  replay server (no answer)
    anyone  --StatsRequest-->    replay server, answered by StatsReply
    anyone  --SnapshotRequest--> replay server, answered by StatsReply (with the snapshot path)
    server  --ErrorReply-->      the requester, when a request cannot be served
    learner --Weights-->         actors (PUB -> SUB), versioned
    any     --Report-->          the launcher's telemetry socket (PUSH -> PULL)

Schemas that carry observations or parameters are built for a given observation spec or
network, so the receiver checks exact shapes and dtypes, not just "some array".
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence

import numpy as np

from qfleet.common.codec import BATCH, ArraySpec, Message, MessageSchema, decode, encode

INSERT, SAMPLE, SAMPLE_BATCH, PRIORITIES = "insert", "sample", "sample_batch", "priorities"
INSERT_FRAMES = "insert_frames"
STATS, SNAPSHOT, STATS_REPLY, ERROR = "stats", "snapshot", "stats_reply", "error"
WEIGHTS, REPORT = "weights", "report"

_INT, _NUM, _STR = (int,), (int, float), (str,)

# The fields of one n-step transition, in wire and storage order. The message schemas, the
# replay ring buffer, the actors' n-step adder and the learner's batches derive theirs from
# these two; InsertBatch and SampleBatch spell them out as typed fields (a test checks).
TRANSITION_FIELDS = ("obs", "action", "reward", "next_obs", "discount")
_SCALAR_DTYPES = {"action": "<i4", "reward": "<f4", "discount": "<f4"}  # the others are observations


def transition_layout(obs_shape: Sequence[int], obs_dtype: Any) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Field name -> (dtype, shape of one transition's value), in TRANSITION_FIELDS order."""
    obs = (np.dtype(obs_dtype), tuple(obs_shape))
    return {name: (np.dtype(_SCALAR_DTYPES[name]), ()) if name in _SCALAR_DTYPES else obs
            for name in TRANSITION_FIELDS}


class InsertBatch(NamedTuple):
    actor_id: int
    seq: int
    weights_version: int
    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    next_obs: np.ndarray
    discount: np.ndarray
    priority: Optional[np.ndarray] = None


class InsertFrames(NamedTuple):
    """Transitions of stacked-frame observations (k, H, W), each frame sent once.

    `frames` are the actor's frames numbered `frame_first`, `frame_first` + 1, ... within
    its `stream` (a number the actor process picks at start, so a restarted actor's
    numbers are not mistaken for its predecessor's). `frame_prev[i]` is the number of the
    frame before frame i in its stack (-1: none; an actor sends all k frames of a stack
    whose predecessor it did not send). A transition's observation is the stack ending at
    frame `obs_frame`, its next observation the one ending at `next_frame`; both may be
    frames of earlier messages of the same stream."""
    actor_id: int
    seq: int
    weights_version: int
    stream: int
    frame_first: int
    frames: np.ndarray
    frame_prev: np.ndarray
    obs_frame: np.ndarray
    next_frame: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    discount: np.ndarray
    priority: Optional[np.ndarray] = None


def is_frame_stack(obs_shape: Sequence[int], obs_dtype: Any) -> bool:
    """Observations sent and stored a frame at a time: uint8 stacks (k, H, W), k >= 2."""
    return len(obs_shape) == 3 and obs_shape[0] >= 2 and np.dtype(obs_dtype) == np.uint8


class SampleRequest(NamedTuple):
    """Asks for `num_batches` batches of `batch_size` in one reply (fewer messages per batch)."""
    request_id: int
    batch_size: int
    beta: float
    num_batches: int = 1


class SampleBatch(NamedTuple):
    """`num_batches * batch_size` rows; importance weights are normalised within each batch.

    What a learner sampling several shards needs comes with every reply: `probability`, each
    row's probability within this shard (p_i**alpha / total_priority; 1 / size for uniform
    replay), and the shard's `total_priority` (sum-tree total; its size for uniform replay)
    and `size` (stored transitions) when the batch was drawn."""
    request_id: int
    keys: np.ndarray
    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    next_obs: np.ndarray
    discount: np.ndarray
    weight: np.ndarray
    probability: np.ndarray
    total_priority: float
    size: int


class PriorityUpdate(NamedTuple):
    keys: np.ndarray
    priority: np.ndarray


class StatsRequest(NamedTuple):
    request_id: int


class SnapshotRequest(NamedTuple):
    request_id: int


class StatsReply(NamedTuple):
    request_id: int
    values: dict


class ErrorReply(NamedTuple):
    request_id: int
    reason: str
    detail: str


class Weights(NamedTuple):
    """Versioned parameters. `epoch` counts learner (re)starts: a restarted learner resumes
    from its checkpoint with an older version number, and the higher epoch tells actors to
    take it anyway."""
    version: int
    published_at: float
    params: dict  # name -> float32 array
    epoch: int = 0


class Report(NamedTuple):
    role: str
    index: int
    values: dict
    episode_returns: Optional[np.ndarray] = None
    episode_lengths: Optional[np.ndarray] = None
    lag_ms: Optional[np.ndarray] = None  # publish -> first use of each weights version applied
    data: Optional[np.ndarray] = None    # a chunk of a shipped file (event "file")


def transition_arrays(obs_shape: Sequence[int], obs_dtype: Any) -> tuple[ArraySpec, ...]:
    return tuple(ArraySpec(name, dtype.str, (BATCH, *shape))
                 for name, (dtype, shape) in transition_layout(obs_shape, obs_dtype).items())


def replay_schemas(obs_shape: Sequence[int], obs_dtype: Any, max_batch: int = 1 << 20) -> dict[str, MessageSchema]:
    """Every schema the replay server and its clients speak, for one observation spec."""
    transition = transition_arrays(obs_shape, obs_dtype)
    request = {"request_id": (_INT, True)}
    schemas = [
        MessageSchema(INSERT, 1, {"actor_id": (_INT, True), "seq": (_INT, True), "weights_version": (_INT, True)},
                      transition + (ArraySpec("priority", "<f4", (BATCH,), optional=True),), max_batch),
        *_frame_schemas(obs_shape, obs_dtype, max_batch),
        MessageSchema(SAMPLE, 1, {**request, "batch_size": (_INT, True), "beta": (_NUM, True),
                                  "num_batches": (_INT, True)}),
        MessageSchema(SAMPLE_BATCH, 2, {**request, "total_priority": (_NUM, True), "size": (_INT, True)},
                      (ArraySpec("keys", "<i8", (BATCH,)),) + transition
                      + (ArraySpec("weight", "<f4", (BATCH,)), ArraySpec("probability", "<f8", (BATCH,))), max_batch),
        MessageSchema(PRIORITIES, 1, {}, (ArraySpec("keys", "<i8", (BATCH,)),
                                          ArraySpec("priority", "<f4", (BATCH,))), max_batch),
        MessageSchema(STATS, 1, request),
        MessageSchema(SNAPSHOT, 1, request),
        MessageSchema(STATS_REPLY, 1, request, open_meta=True),
        MessageSchema(ERROR, 1, {**request, "reason": (_STR, True), "detail": (_STR, True)}),
    ]
    return {s.type: s for s in schemas}


def _frame_schemas(obs_shape: Sequence[int], obs_dtype: Any, max_batch: int) -> list[MessageSchema]:
    if not is_frame_stack(obs_shape, obs_dtype):
        return []
    meta = {name: (_INT, True) for name in ("actor_id", "seq", "weights_version", "stream", "frame_first")}
    arrays = (ArraySpec("frames", "|u1", (None, *obs_shape[1:])), ArraySpec("frame_prev", "<i8", (None,)),
              ArraySpec("obs_frame", "<i8", (BATCH,)), ArraySpec("next_frame", "<i8", (BATCH,)),
              *(ArraySpec(name, _SCALAR_DTYPES[name], (BATCH,)) for name in ("action", "reward", "discount")),
              ArraySpec("priority", "<f4", (BATCH,), optional=True))
    return [MessageSchema(INSERT_FRAMES, 1, meta, arrays, max_batch)]


def weights_schema(param_shapes: dict[str, tuple[int, ...]]) -> MessageSchema:
    """Schema of a Weights message for one network (parameter names and exact shapes)."""
    arrays = tuple(ArraySpec(name, "<f4", tuple(shape)) for name, shape in param_shapes.items())
    return MessageSchema(WEIGHTS, 1, {"version": (_INT, True), "published_at": (_NUM, True),
                                      "epoch": (_INT, True)}, arrays)


REPORT_SCHEMA = MessageSchema(
    REPORT, 1, {"role": (_STR, True), "index": (_INT, True)},
    (ArraySpec("episode_returns", "<f4", (BATCH,), optional=True),
     ArraySpec("episode_lengths", "<i4", (BATCH,), optional=True),
     ArraySpec("lag_ms", "<f4", (None,), optional=True),
     ArraySpec("data", "|u1", (None,), optional=True)),
    max_batch=1 << 16, open_meta=True)


def pack(schema: MessageSchema, msg: NamedTuple) -> list:
    """Frames of a typed message. Fields named in the schema's arrays become frames;
    a `values`/`params` dict field is spread into metadata/arrays respectively."""
    fields = msg._asdict()
    arrays = dict(fields.pop("params", None) or {})
    meta = dict(fields.pop("values", None) or {})
    names = {s.name for s in schema.arrays}
    for key, value in fields.items():
        if key in names:
            if value is not None:
                arrays[key] = value
        else:
            meta[key] = value
    return encode(schema, meta, arrays)


def unpack(cls: type, message: Message) -> Any:
    """The typed NamedTuple for a decoded message (arrays stay read-only views)."""
    fields = cls._fields
    kwargs = {k: v for k, v in message.meta.items() if k in fields}
    kwargs.update({k: v for k, v in message.arrays.items() if k in fields})
    if "values" in fields:
        kwargs["values"] = {k: v for k, v in message.meta.items() if k not in fields}
    if "params" in fields:
        kwargs["params"] = dict(message.arrays)
    return cls(**kwargs)


def decode_as(cls: type, frames: Sequence[Any], schemas: dict[str, MessageSchema], **kwargs: Any) -> Any:
    """Decode frames that must be of one message type into its NamedTuple."""
    return unpack(cls, decode(frames, schemas, **kwargs))
