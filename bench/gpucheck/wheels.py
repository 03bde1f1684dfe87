"""Which carried wheels ``scripts/gpu-check.sh`` installs: ``python bench/gpucheck/wheels.py FOLDER``
prints their paths, one a line, and why each other wheel is left out (on stderr).

A wheel is installed where the image lacks its distribution, or has it below the project's floor
(pyproject.toml: ``grpcio>=1.75.1``, ``protobuf>=6.31.1``, ...) and the wheel meets the floor; never over
a version the image has that is good enough (its torch, its numpy). Only wheels this Python can install
count (a cp311 wheel does nothing on Python 3.12). Standard library only: it runs before the carried
packages are on the path, by file name, so that no package of the project is imported.
"""

from __future__ import annotations

import platform
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def release(version: str) -> tuple[int, ...]:
    """``2.11.0+cu130`` -> (2, 11, 0); ``1.75.1rc1`` -> (1, 75, 1)."""
    match = re.match(r"\d+(\.\d+)*", version)
    return tuple(int(n) for n in match.group(0).split(".")) if match else ()


def floors(pyproject: str) -> dict[str, str]:
    """Every ``name>=version`` in the pyproject's dependency lists (the first floor per name)."""
    found: dict[str, str] = {}
    for name, version in re.findall(r'"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*>=\s*([0-9][0-9.]*)', pyproject):
        found.setdefault(normalized(name), version)
    return found


@dataclass(frozen=True)
class Wheel:
    path: Path
    name: str
    version: str
    python: tuple[str, ...]
    abi: tuple[str, ...]
    platforms: tuple[str, ...]

    @classmethod
    def parse(cls, path: Path) -> Wheel | None:
        parts = path.name.removesuffix(".whl").split("-")
        if len(parts) not in (5, 6):
            return None
        name, version, python, abi, plat = parts[0], parts[1], parts[-3], parts[-2], parts[-1]
        return cls(path, normalized(name), version, *(tuple(t.split(".")) for t in (python, abi, plat)))

    def fits(self, python: tuple[int, int], machine: str) -> bool:
        """Whether an interpreter of that version on that machine (Linux, CPython) can install it."""
        major, minor = python
        interpreters = {"py3", f"py{major}{minor}", f"cp{major}{minor}"}
        abis = {"none", "abi3", f"cp{major}{minor}"}
        stable_abi = any(
            tag.startswith("cp3") and tag[2:].isdigit() and int(tag[3:]) <= minor for tag in self.python
        )
        python_fits = bool(interpreters & set(self.python)) or ("abi3" in self.abi and stable_abi)
        platform_fits = any(
            p == "any" or (p.endswith(f"_{machine}") and p.startswith(("manylinux", "linux")))
            for p in self.platforms
        )
        return python_fits and bool(abis & set(self.abi)) and platform_fits


def choose(
    wheels: Iterable[Path],
    installed: dict[str, str | None],
    floor: dict[str, str],
    python: tuple[int, int],
    machine: str,
) -> tuple[list[Path], list[str]]:
    """The wheels to install (the newest fitting one per distribution), and why each other is not."""
    chosen: dict[str, Wheel] = {}
    reasons: list[str] = []
    for path in sorted(wheels):
        wheel = Wheel.parse(path)
        if wheel is None:
            reasons.append(f"{path.name}: not a wheel's name")
        elif not wheel.fits(python, machine):
            reasons.append(f"{path.name}: not for CPython {python[0]}.{python[1]} on {machine}")
        elif wheel.name in chosen and release(chosen[wheel.name].version) >= release(wheel.version):
            reasons.append(f"{path.name}: a newer {wheel.name} is carried")
        else:
            if wheel.name in chosen:
                reasons.append(f"{chosen[wheel.name].path.name}: a newer {wheel.name} is carried")
            chosen[wheel.name] = wheel
    install = []
    for name, wheel in chosen.items():
        have, needed = installed.get(name), floor.get(name)
        if have is None:
            install.append(wheel.path)
        elif needed is None or release(have) >= release(needed):
            reasons.append(f"{wheel.path.name}: the image's {name} {have} will do")
        elif release(wheel.version) < release(needed):
            reasons.append(f"{wheel.path.name}: below the floor {name}>={needed}, as is the image's {have}")
        else:
            install.append(wheel.path)
    return install, reasons


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def main(argv: list[str]) -> int:
    folder = Path(argv[0]) if argv else Path(".whl")
    wheels = sorted(folder.glob("*.whl"))
    names = {w.name for w in map(Wheel.parse, wheels) if w is not None}
    install, reasons = choose(
        wheels,
        {name: installed_version(name) for name in names},
        floors(PYPROJECT.read_text()),
        sys.version_info[:2],
        platform.machine(),
    )
    for reason in reasons:
        print(f"carried wheel left out: {reason}", file=sys.stderr)
    for path in install:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
