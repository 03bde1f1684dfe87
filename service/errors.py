"""The server's error tree, and the one place it maps to gRPC status codes and metric outcomes."""

from __future__ import annotations

import grpc


class ServeError(Exception):
    """Base of every error the server reports to a client."""

    code = grpc.StatusCode.INTERNAL
    outcome = "internal"  # the `outcome` label of cnnserve_requests_total

    @property
    def message(self) -> str:
        return str(self)


class ModelNotFound(ServeError):
    code = grpc.StatusCode.NOT_FOUND
    outcome = "not_found"


class InvalidInput(ServeError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    outcome = "invalid_argument"


class Overloaded(ServeError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    outcome = "resource_exhausted"


class DeadlineExceeded(ServeError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    outcome = "deadline_exceeded"


class Unavailable(ServeError):
    code = grpc.StatusCode.UNAVAILABLE
    outcome = "unavailable"


class Cancelled(ServeError):
    code = grpc.StatusCode.CANCELLED
    outcome = "cancelled"


class BackendError(ServeError):
    """The backend failed on a batch; only that batch's requests fail."""


class ModelLoadError(ServeError):
    """A model folder cannot be served (bad config, manifest, checksum, artifact, or backend)."""


class NotAllowed(ServeError):
    """The operation is not possible in the server's current mode (e.g. load/unload outside explicit)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    outcome = "invalid_argument"


def to_serve_error(exc: BaseException) -> ServeError:
    """Any exception as a ServeError (unexpected ones become INTERNAL with their reason)."""
    if isinstance(exc, ServeError):
        return exc
    return ServeError(f"internal error: {type(exc).__name__}: {exc}")
