"""Throwaway TLS certificates for tests: a CA, a server certificate and a client certificate, made with the
openssl command line."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

SERVER_NAME = "cnnserve.test"  # the only name in the server certificate: 127.0.0.1 needs a name override


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)


def _issue(folder: Path, ca: Path, ca_key: Path, name: str, extensions: str) -> tuple[Path, Path]:
    cert, key, csr, ext = (folder / f"{name}.{suffix}" for suffix in ("pem", "key", "csr", "ext"))
    ext.write_text(extensions + "authorityKeyIdentifier=keyid,issuer\nsubjectKeyIdentifier=hash\n")
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        key,
        "-out",
        csr,
        "-subj",
        f"/CN={name}",
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        ca,
        "-CAkey",
        ca_key,
        "-CAcreateserial",
        "-out",
        cert,
        "-days",
        "1",
        "-extfile",
        ext,
    )
    return cert, key


def make_tls_files(folder: Path) -> TlsFiles:
    """A CA, a server certificate for SERVER_NAME and a client certificate, valid for a day, in ``folder``
    (made with the openssl command line)."""
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        ca_key,
        "-out",
        ca,
        "-days",
        "1",
        "-subj",
        "/CN=cnnserve test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    server = _issue(
        folder, ca, ca_key, "server", f"subjectAltName=DNS:{SERVER_NAME}\nextendedKeyUsage=serverAuth\n"
    )
    client = _issue(folder, ca, ca_key, "client", "extendedKeyUsage=clientAuth\n")
    return TlsFiles(ca, *server, *client)
