"""The carried wheels the GPU check installs: only what the image lacks or has below the project's floor,
only wheels this Python can install, the newest of each."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.gpucheck.wheels import PYPROJECT, Wheel, choose, floors

ROOT = Path(__file__).resolve().parents[2]
CP312 = "cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64"
FLOORS = {"grpcio": "1.75.1", "protobuf": "6.31.1", "torch": "2.5"}


def decide(names: list[str], installed: dict[str, str | None]):
    install, reasons = choose([Path(n) for n in names], installed, FLOORS, (3, 12), "x86_64")
    return [p.name for p in install], reasons


def test_a_wheel_goes_in_only_below_the_floor_or_where_the_image_lacks_it():
    carried = [
        f"grpcio-1.75.1-{CP312}.whl",
        "protobuf-6.31.1-cp39-abi3-manylinux2014_x86_64.whl",
        "grpcio_reflection-1.75.1-py3-none-any.whl",
        f"torch-2.11.0-{CP312}.whl",
    ]
    image = {"grpcio": "1.71.0", "protobuf": "6.33.0", "grpcio-reflection": None, "torch": "2.11.0+cu130"}
    install, reasons = decide(carried, image)
    assert install == [f"grpcio-1.75.1-{CP312}.whl", "grpcio_reflection-1.75.1-py3-none-any.whl"]
    assert "the image's protobuf 6.33.0 will do" in reasons[0]
    assert "the image's torch 2.11.0+cu130 will do" in reasons[1]


def test_an_old_protobuf_is_replaced_through_the_stable_abi():
    install, _ = decide(["protobuf-6.31.1-cp39-abi3-manylinux2014_x86_64.whl"], {"protobuf": "5.29.3"})
    assert install == ["protobuf-6.31.1-cp39-abi3-manylinux2014_x86_64.whl"]


def test_wheels_for_another_python_or_below_the_floor_are_left_out_with_the_reason():
    carried = [
        "grpcio-1.75.1-cp311-cp311-manylinux_2_17_x86_64.whl",
        f"grpcio-1.70.0-{CP312}.whl",
        "grpcio-1.76.0-cp312-cp312-macosx_11_0_universal2.whl",
    ]
    install, reasons = decide(carried, {"grpcio": "1.69.0"})
    assert install == []
    assert reasons == [
        "grpcio-1.75.1-cp311-cp311-manylinux_2_17_x86_64.whl: not for CPython 3.12 on x86_64",
        "grpcio-1.76.0-cp312-cp312-macosx_11_0_universal2.whl: not for CPython 3.12 on x86_64",
        f"grpcio-1.70.0-{CP312}.whl: below the floor grpcio>=1.75.1, as is the image's 1.69.0",
    ]


def test_the_newest_of_a_distribution_is_taken():
    install, reasons = decide([f"grpcio-1.75.1-{CP312}.whl", f"grpcio-1.80.0-{CP312}.whl"], {"grpcio": None})
    assert install == [f"grpcio-1.80.0-{CP312}.whl"]
    assert reasons == [f"grpcio-1.75.1-{CP312}.whl: a newer grpcio is carried"]


def test_floors_are_the_pyprojects():
    found = floors(PYPROJECT.read_text())
    assert (found["grpcio"], found["protobuf"], found["torch"]) == ("1.75.1", "6.31.1", "2.5")
    assert found["uvicorn"] == "0.29"  # extras in brackets are not part of the name
    assert Wheel.parse(Path("not-a-wheel.whl")) is None


def test_the_script_runs_by_file_name_and_prints_what_to_install(tmp_path):
    """As scripts/gpu-check.sh runs it, with the project off the path (it must import none of it)."""
    for name in ("cnnserve_absent_dist-1.0-py3-none-any.whl", "pip-0.1-py3-none-any.whl"):
        (tmp_path / name).write_bytes(b"")
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpucheck" / "wheels.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [str(tmp_path / "cnnserve_absent_dist-1.0-py3-none-any.whl")]
    assert "pip-0.1-py3-none-any.whl: the image's pip" in done.stderr
