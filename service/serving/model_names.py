"""What a client may give as a model name, checked before any file is looked at.

A model name is one folder of the repository: one path component, so that no name reaches outside the
repository (``..``) or walks a tree (``/``), and short enough to be a file name (a longer one would make
the file system answer ENAMETOOLONG).
"""

from __future__ import annotations

from service.errors import InvalidInput, clip

MAX_NAME_BYTES = 255  # NAME_MAX of Linux file systems


def check_model_name(name: str) -> str:
    """``name`` when it can name a model folder; :class:`InvalidInput` saying why not otherwise."""
    if not name:
        raise InvalidInput("model name is empty")
    if len(name) > MAX_NAME_BYTES:  # cheap first: a character is at least one byte
        raise InvalidInput(
            f"model name {clip(name)} is longer than {MAX_NAME_BYTES} bytes ({len(name)} characters)"
        )
    if "/" in name or name in (".", ".."):
        raise InvalidInput(f"model name {clip(name)} is not a model folder's name: no '/', '.' or '..'")
    if not name.isprintable():  # NUL, control characters, lone surrogates
        raise InvalidInput(f"model name {clip(name)} holds characters that are not printable")
    size = len(name.encode())
    if size > MAX_NAME_BYTES:
        raise InvalidInput(f"model name {clip(name)} is longer than {MAX_NAME_BYTES} bytes ({size} bytes)")
    return name
