"""Regenerate, or check, the Python stubs checked in next to the .proto files.

    python -m protos.generate          # rewrite stale stubs in place
    python -m protos.generate --check  # exit 1 listing stale stubs, write nothing

protoc (from ``grpcio-tools``) runs with the repository root as its only
include root, so the protos import each other as ``protos/<name>.proto`` and
the generated code imports ``from protos import ...``.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent

# proto file -> whether it declares a service (and so gets a *_pb2_grpc.py).
PROTOS = {
    "model_config.proto": False,
    "grpc_service.proto": True,
    "health.proto": True,
}

# The only generated line allowed to differ between grpcio-tools releases
# without the stubs counting as stale: protoc's version comment.
_VERSION_COMMENT = re.compile(r"^# Protobuf Python Version: .*$", re.MULTILINE)


def expected_files() -> list[str]:
    """Names (inside the package directory) of all generated files."""
    names = []
    for proto, has_service in PROTOS.items():
        stem = proto.removesuffix(".proto")
        names += [f"{stem}_pb2.py", f"{stem}_pb2.pyi"]
        if has_service:
            names.append(f"{stem}_pb2_grpc.py")
    return sorted(names)


def _run_protoc(out_dir: Path) -> None:
    """Compile every proto into ``out_dir`` (which mirrors the repo root)."""
    from grpc_tools import protoc  # imported lazily: only needed to generate

    base = ["grpc_tools.protoc", f"-I{REPO_ROOT}"]
    messages = [str(PACKAGE_DIR / p) for p in PROTOS]
    services = [str(PACKAGE_DIR / p) for p, svc in PROTOS.items() if svc]
    calls = [
        [*base, f"--python_out={out_dir}", f"--pyi_out={out_dir}", *messages],
        [*base, f"--grpc_python_out={out_dir}", *services],
    ]
    for args in calls:
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args[1:])}")


def render() -> dict[str, str]:
    """Generate all stubs in a scratch directory and return name -> text."""
    with tempfile.TemporaryDirectory(prefix="protos-gen-") as tmp:
        _run_protoc(Path(tmp))
        gen_dir = Path(tmp) / PACKAGE_DIR.name
        produced = sorted(p.name for p in gen_dir.iterdir())
        if produced != expected_files():
            raise RuntimeError(f"protoc produced {produced}, expected {expected_files()}")
        return {name: (gen_dir / name).read_text("utf-8") for name in produced}


def _normalise(text: str) -> str:
    return _VERSION_COMMENT.sub("", text)


def _leftovers() -> list[Path]:
    """Generated-looking files in the package that we no longer generate."""
    expected = set(expected_files())
    return sorted(
        p
        for p in PACKAGE_DIR.iterdir()
        if re.search(r"_pb2(_grpc)?\.pyi?$", p.name) and p.name not in expected
    )


def check() -> list[str]:
    """Return repo-relative paths of generated files that are stale, missing
    or no longer generated. Only protoc's version comment is ignored."""
    stale = []
    for name, fresh in render().items():
        path = PACKAGE_DIR / name
        if not path.is_file() or _normalise(path.read_text("utf-8")) != _normalise(fresh):
            stale.append(path)
    stale += _leftovers()
    return [p.relative_to(REPO_ROOT).as_posix() for p in stale]


def generate() -> list[str]:
    """Write fresh stubs next to the protos and delete ones no longer
    generated; return the repo-relative paths that changed."""
    changed = []
    for name, fresh in render().items():
        path = PACKAGE_DIR / name
        if not path.is_file() or path.read_text("utf-8") != fresh:
            path.write_text(fresh, "utf-8")
            changed.append(path)
    for path in _leftovers():
        path.unlink()
        changed.append(path)
    return [p.relative_to(REPO_ROOT).as_posix() for p in changed]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protos.generate", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if any generated file is stale",
    )
    args = parser.parse_args(argv)
    try:
        if args.check:
            stale = check()
            for path in stale:
                print(f"stale: {path}")
            if stale:
                print("run `python -m protos.generate` to regenerate")
                return 1
            print("generated stubs are up to date")
            return 0
        for path in generate():
            print(f"updated {path}")
        return 0
    except ImportError as exc:
        print(f"grpcio-tools is required: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
