"""The server's error tree and the one table that maps it to each protocol's status and to metric outcomes.

An error carries a status named as gRPC names it (``INVALID_ARGUMENT``); the gRPC front end uses that
code, the HTTP front end the matching HTTP status from :data:`HTTP_STATUS`, and metrics count the
lower-cased name as the request's ``outcome``. Nothing here imports a transport.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

# gRPC status name -> HTTP status (KServe v2 REST / Triton's HTTP front end)
HTTP_STATUS = {
    "OK": 200,
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNKNOWN": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


class ServeError(Exception):
    """Base of every error the server reports to a client."""

    status = "INTERNAL"
    outcome = "internal"  # the `outcome` label of cnnserve_requests_total: the status, lower-cased

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.outcome = cls.status.lower()

    @property
    def message(self) -> str:
        return str(self)

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.status]


class ModelNotFound(ServeError):
    status = "NOT_FOUND"


class InvalidInput(ServeError):
    status = "INVALID_ARGUMENT"


class PayloadTooLarge(ServeError):
    """A request body over a limit (gRPC refuses such a message with RESOURCE_EXHAUSTED)."""

    status = "RESOURCE_EXHAUSTED"
    http_status = 413


class Overloaded(ServeError):
    status = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(ServeError):
    status = "DEADLINE_EXCEEDED"


class Unavailable(ServeError):
    status = "UNAVAILABLE"


class Cancelled(ServeError):
    """The client went away (cancelled, disconnected) before its answer was ready."""

    status = "CANCELLED"


class BackendError(ServeError):
    """The backend failed on a batch; only that batch's requests fail."""


class ModelLoadError(ServeError):
    """A model folder cannot be served (bad config, manifest, checksum, artifact, or backend)."""


class NotAllowed(ServeError):
    """The operation is not possible in the server's current mode (e.g. load/unload outside explicit)."""

    status = "FAILED_PRECONDITION"


class PermissionDenied(ServeError):
    """A restricted operation was called without the header key/value that allows it."""

    status = "PERMISSION_DENIED"


class Unauthenticated(ServeError):
    """A restricted operation was called without the header that identifies the caller."""

    status = "UNAUTHENTICATED"


# The outcomes a ModelInfer can have (cnnserve_requests_total{outcome}); every one is exported from the start.
INFER_OUTCOMES = tuple(
    cls.outcome
    for cls in (
        ServeError,
        InvalidInput,
        ModelNotFound,
        Overloaded,
        DeadlineExceeded,
        Unavailable,
        Cancelled,
    )
)
SUCCESS = "success"
OUTCOMES = (SUCCESS, *INFER_OUTCOMES)


def to_serve_error(exc: BaseException) -> ServeError:
    """Any exception as a ServeError (unexpected ones become INTERNAL with their reason)."""
    if isinstance(exc, ServeError):
        return exc
    return ServeError(f"internal error: {type(exc).__name__}: {exc}")


# An absolute path: a slash not preceded by a word character, ':' or '/' (so URLs and "image/png" stay).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/-])/(?:[\w.@+-]+/)*[\w.@+-]*")


def redact_paths(message: str, root: Path | None = None) -> str:
    """``message`` without the server's filesystem paths: those under ``root`` (the model repository)
    become relative to it, any other becomes its last component."""
    root_text = str(root.absolute()) if root is not None else None

    def replace(match: re.Match) -> str:
        path = match.group(0)
        if root_text and path.startswith(root_text + "/"):
            return path[len(root_text) + 1 :]
        if root_text and path == root_text:
            return "the model repository"
        return path.rstrip("/").rsplit("/", 1)[-1] or path

    return _ABSOLUTE_PATH.sub(replace, message)


CLIP_CHARS = 64  # what a message shows of one value a client sent


def clip(value: object, limit: int = CLIP_CHARS) -> str:
    """``repr(value)`` in about ``limit`` characters, made without formatting more of ``value`` than it
    shows: a client's name, shape or header can be megabytes, and a message must not cost their size."""
    if isinstance(value, str | bytes | bytearray):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}...({len(value)} {'characters' if isinstance(value, str) else 'bytes'})"
    if isinstance(value, bool | float) or value is None:
        return repr(value)
    if isinstance(value, int):  # int -> str costs time quadratic in the digits (and fails past 4300)
        bits = value.bit_length()
        return repr(value) if bits <= 4 * limit else f"<an integer of {bits} bits>"
    if isinstance(value, Mapping):
        return f"<an object of {len(value)} entries>"
    try:
        count = len(value)  # type: ignore[arg-type]
        items = iter(value)  # type: ignore[call-overload]
    except TypeError:
        text = repr(value)
        return text if len(text) <= limit else f"{text[:limit]}...({type(value).__name__})"
    shown, used = [], 0
    for item in items:
        if used >= limit:
            break
        text = clip(item, limit // 4)
        shown.append(text)
        used += len(text) + 2
    if len(shown) == count:
        return "[" + ", ".join(shown) + "]"
    return "[" + "".join(f"{text}, " for text in shown) + f"...({count} items)]"


# A gRPC status message travels in HTTP/2 trailers, which clients refuse past 8-16 KiB (and percent-encode
# non-ASCII bytes into three): a message that echoes a hostile name whole would not arrive at all.
MAX_MESSAGE_BYTES = 1024


def shorten(message: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """``message`` within ``limit`` UTF-8 bytes: its start and its end (which says what was expected),
    with how much was left out between them."""
    if len(message) <= limit // 4:  # no character takes more than 4 bytes: no need to encode
        return message
    data = message.encode(errors="surrogatepass")
    if len(data) <= limit:
        return message
    head = data[: limit * 2 // 3].decode(errors="ignore")
    tail = data[-(limit // 4) :].decode(errors="ignore")
    return f"{head} ...[{len(data)} bytes, shortened]... {tail}"


def _bound(message: str, limit: int) -> str:
    """``message`` cut to its first and last ``limit // 2`` characters at spaces, so that no path is cut
    in two (a path's tail would escape :func:`redact_paths`)."""
    if len(message) <= limit:
        return message
    head = message[: limit // 2].rsplit(" ", 1)[0]
    tail = message[-(limit // 2) :].split(" ", 1)[-1]
    return f"{head} ...[{len(message)} characters, shortened]... {tail}"


def public_status(exc: BaseException, root: Path | None = None) -> tuple[str, str]:
    """What a client is told of an exception: (status name, message without filesystem paths, within
    :data:`MAX_MESSAGE_BYTES`). The message is bounded before the paths are looked for, in case client
    data reached it unclipped."""
    error = to_serve_error(exc)
    return error.status, shorten(redact_paths(_bound(error.message, 8 * MAX_MESSAGE_BYTES), root))
