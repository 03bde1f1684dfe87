"""Locking the front ends down: TLS credentials, and Triton's restricted protocols.

``--restricted-protocol GROUP[,GROUP...]:KEY=VALUE`` (Triton's ``--grpc-restricted-protocol``): the RPCs of
those groups are answered only to calls carrying header KEY with VALUE; a call without the header gets
UNAUTHENTICATED, one with another value PERMISSION_DENIED. Health probes on the health port are never
restricted.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from service.errors import PermissionDenied, Unauthenticated

# Triton's protocol groups, and the RPCs of each
GROUPS: dict[str, tuple[str, ...]] = {
    "health": ("ServerLive", "ServerReady", "ModelReady"),
    "metadata": ("ServerMetadata", "ModelMetadata"),
    "inference": ("ModelInfer", "ModelStreamInfer"),
    "model-config": ("ModelConfig",),
    "model-repository": ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"),
    "statistics": ("ModelStatistics",),
}
GROUP_OF = {rpc: group for group, rpcs in GROUPS.items() for rpc in rpcs}


@dataclass(frozen=True)
class Restriction:
    groups: frozenset[str]
    key: str  # lower case: gRPC metadata keys are, and HTTP header names are case-insensitive
    value: str

    def check(self, headers: Mapping[str, str]) -> None:
        """Raise unless ``headers`` (lower-case names) carry the key with the value."""
        given = headers.get(self.key)
        what = f"{'/'.join(sorted(self.groups))} calls are restricted"
        if given is None:
            raise Unauthenticated(f"{what}: send the header {self.key!r} with its value")
        if not hmac.compare_digest(given.encode(), self.value.encode()):
            raise PermissionDenied(f"{what}: the value of header {self.key!r} is not the one required")


def parse_restrictions(specs: Sequence[str]) -> dict[str, Restriction]:
    """``GROUP[,GROUP...]:KEY=VALUE`` specs -> the restriction of each restricted group (ValueError naming
    what is wrong)."""
    by_group: dict[str, Restriction] = {}
    for spec in specs:
        groups_part, sep, header = spec.partition(":")
        key, eq, value = header.partition("=")
        groups = frozenset(g.strip() for g in groups_part.split(",") if g.strip())
        if not sep or not eq or not key.strip() or not value or not groups:
            raise ValueError(f"restricted protocol {spec!r}: expected GROUP[,GROUP...]:KEY=VALUE")
        unknown = sorted(groups - set(GROUPS))
        if unknown:
            raise ValueError(
                f"restricted protocol {spec!r}: unknown group(s) {unknown}; groups: {sorted(GROUPS)}"
            )
        restriction = Restriction(groups, key.strip().lower(), value)
        for group in groups:
            if group in by_group:
                raise ValueError(f"restricted protocol {spec!r}: group {group!r} is restricted twice")
            by_group[group] = restriction
    return by_group


def headers_of(metadata: Iterable[tuple[str, str | bytes]] | None) -> dict[str, str]:
    """gRPC invocation metadata as a dict of text values (binary ``-bin`` entries left out)."""
    return {k.lower(): v for k, v in metadata or () if isinstance(v, str)}


def read_pem(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def grpc_server_credentials(cert, key, client_ca=None):
    """TLS for a gRPC server; with ``client_ca`` clients must present a certificate it signed."""
    import grpc

    return grpc.ssl_server_credentials(
        [(read_pem(key), read_pem(cert))],
        root_certificates=read_pem(client_ca) if client_ca is not None else None,
        require_client_auth=client_ca is not None,
    )
