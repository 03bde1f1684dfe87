"""Running a tritonclient script in a process of its own (tritonclient's generated protobufs clash with
ours in one process): the script gets the server's URL and a folder holding its inputs, and prints JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np


def run_client_script(
    script: str,
    url: str,
    folder: Path,
    digit_png: Callable[[int], bytes],
    *,
    rows: int,
    x_seed: int,
    png_seed: int,
) -> dict:
    """Write ``x.npy`` (``rows`` LeNet-5 inputs), ``0.png`` and ``1.png`` (digits) and ``script`` into
    ``folder``, run the script there as ``client.py URL FOLDER`` and return what it printed."""
    x = np.random.default_rng(x_seed).uniform(-1, 1, (rows, 1, 32, 32)).astype(np.float32)
    np.save(folder / "x.npy", x)
    for i in range(2):
        (folder / f"{i}.png").write_bytes(digit_png(png_seed + i))
    (folder / "client.py").write_text(script)
    done = subprocess.run(
        [sys.executable, str(folder / "client.py"), url, str(folder)],
        cwd=folder,  # not the repository root: our `protos` package is not importable there
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
