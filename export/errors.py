"""The export errors the CLI turns into one-line messages and non-zero exits."""

from __future__ import annotations


class ExportError(Exception):
    """An export cannot go on; the message says why and, where there is one, the remedy."""

    exit_code = 2  # the request cannot be served as given


class VersionExistsError(ExportError):
    """The version folder is already in the repository and --force was not given."""


class CalibrationError(ExportError):
    """Calibration or evaluation images cannot be read."""


class TensorRTUnavailableError(ExportError):
    """TensorRT plans were required (--tensorrt on) where TensorRT or a GPU is missing."""


class ValidationError(ExportError):
    """An artifact disagrees with PyTorch beyond tolerance; nothing was written."""

    exit_code = 1
