"""The numerics a torch program is served with, shared by the server (which sets them) and the export (which
checks programs under them). Torch is passed in, never imported: this package ships without it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def serving_numerics(torch: Any, dtype: Any) -> dict[str, bool]:
    """The global CUDA flags a program of ``dtype`` is served with: cuDNN autotuning (each bucket has a
    fixed shape, so the fastest algorithm is found once per shape); FP32 programs compute in FP32, not
    TF32 (cuDNN's default), so that they match the validation their manifest records (the FP16 entry is
    the fast one). The export checks programs with these same flags (:func:`numerics`)."""
    flags = {"cudnn.benchmark": True}
    if dtype == torch.float32:
        flags |= {"cudnn.allow_tf32": False, "cuda.matmul.allow_tf32": False}
    return flags


def _flag_owner(torch: Any, name: str) -> tuple[Any, str]:
    path, attribute = name.rsplit(".", 1)
    owner = torch.backends
    for part in path.split("."):
        owner = getattr(owner, part)
    return owner, attribute


def configure_cuda(torch: Any, dtype: Any) -> None:
    """Set the serving numerics of ``dtype`` process-wide, the same for every torch model served."""
    for name, value in serving_numerics(torch, dtype).items():
        setattr(*_flag_owner(torch, name), value)


@contextlib.contextmanager
def numerics(torch: Any, dtype: Any) -> Iterator[None]:
    """The serving numerics of ``dtype`` while the block runs, the previous flags restored after (for a
    process that does more than serve: the export's checks of a program)."""
    saved = {name: getattr(*_flag_owner(torch, name)) for name in serving_numerics(torch, dtype)}
    configure_cuda(torch, dtype)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(*_flag_owner(torch, name), value)
