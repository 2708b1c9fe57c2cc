"""qfleet's own exception types.

Every error a user or a peer can cause is one of these, with a message that names the
problem and what to do about it. Nothing from the network is trusted: decoding failures
raise `CodecError`, never a KeyError or struct.error from deep inside a library.
"""


class QfleetError(Exception):
    """Base class of every error qfleet raises on purpose."""


class ConfigError(QfleetError):
    """A configuration value, file or override is invalid."""


class CodecError(QfleetError):
    """A wire message is malformed. `reason` is a short stable tag used in counters."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class QfleetTimeout(QfleetError):
    """A peer did not answer within the timeout. The peer may be dead or overloaded."""


class RemoteError(QfleetError):
    """A server answered a request with an error (bad request, rate limited, ...)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class RequestError(QfleetError):
    """A well-formed message or call asks for what cannot be done: actions or discounts out
    of range, a batch size over the server's limit, a snapshot from a server that keeps none.
    Not a `CodecError`: the message decoded fine. `reason` is a short stable tag used in
    counters and sent back in the error reply."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class EvaluationError(QfleetError):
    """A greedy evaluation failed (the environment raised, the evaluator process died). The
    learner reports it and keeps training; that evaluation is skipped."""


class EnvironmentSpecError(QfleetError):
    """An environment id is unknown or its spaces are not supported."""


class CheckpointError(QfleetError):
    """A checkpoint or snapshot is missing, corrupt, or incompatible with the config."""


class RunDirError(QfleetError):
    """A run directory is missing, or holds none of the files a command reads from it."""


class LaunchError(QfleetError):
    """A launcher could not start or keep its components (one failed to start, none became
    ready in time); the message names the component and where its log is."""


class MissingExtraError(QfleetError):
    """An optional dependency (a pip extra of qfleet) is not installed; the message names
    the pip command that installs it."""
