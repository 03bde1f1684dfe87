"""TLS and per-call headers, alike for gRPC and HTTP: how the client proves who it is and checks the server.

``TlsSettings`` holds file paths only (it crosses into worker processes); each side builds its own
credentials from them: ``grpc.ssl_channel_credentials`` for gRPC, an ``ssl.SSLContext`` for HTTPS.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from pathlib import Path

from loadtest.errors import UsageError

# RFC 9110 token characters: what an HTTP header name (and a gRPC metadata key, lower-cased) may hold.
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Set by the transports themselves; a user's copy would clash with theirs.
RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "host", "te", "user-agent", "inference-header-content-length"}
)


@dataclass(frozen=True)
class TlsSettings:
    ca: Path | None = None  # verify the server against this CA (None: the system's trusted roots)
    cert: Path | None = None  # client certificate chain, for mutual TLS
    key: Path | None = None  # its private key
    server_name: str | None = None  # the name to expect in the server's certificate, if not the URL's host

    def check(self) -> None:
        """Raise UsageError naming the flag whose file is missing or unreadable."""
        if (self.cert is None) != (self.key is None):
            raise UsageError("--tls-cert and --tls-key go together: give both for mutual TLS, or neither")
        for flag, path in (("--tls-ca", self.ca), ("--tls-cert", self.cert), ("--tls-key", self.key)):
            if path is not None and not path.is_file():
                raise UsageError(f"{flag} {path}: no such file")
        self.ssl_context()  # PEM errors surface here, before any connection

    def ssl_context(self) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(cafile=self.ca)
        except (ssl.SSLError, OSError) as error:
            raise UsageError(f"--tls-ca {self.ca}: not a PEM CA certificate ({error})") from None
        if self.cert is not None:
            try:
                context.load_cert_chain(self.cert, self.key)
            except (ssl.SSLError, OSError) as error:
                raise UsageError(
                    f"--tls-cert {self.cert} / --tls-key {self.key}: not a matching PEM certificate and "
                    f"key ({error})"
                ) from None
        return context

    def grpc_credentials(self):
        import grpc

        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes() if self.ca else None,
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )

    def grpc_options(self) -> tuple[tuple[str, str], ...]:
        if self.server_name is None:
            return ()
        return (("grpc.ssl_target_name_override", self.server_name),)


def check_header(name: str, value: str) -> None:
    if not HEADER_NAME.fullmatch(name):
        raise UsageError(f"--header {name}={value}: {name!r} is not a valid header name")
    if name.lower() in RESERVED_HEADERS or name.lower().startswith("grpc-"):
        raise UsageError(f"--header {name}: set by the client itself; choose another header")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise UsageError(f"--header {name}: the value holds control characters")


def grpc_metadata(headers: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """gRPC metadata keys are lower case; HTTP/2 (which gRPC runs on) lower-cases every header name."""
    return tuple((name.lower(), value) for name, value in headers)
