"""The export errors: one-line reasons that name the parameter at fault.

A message names its parameter with the placeholder ``{option}``: the Python API shows it as Python does
(``max_batch_size``), ``python -m export`` as the command-line flag (``--max-batch-size``), through
:meth:`ExportError.cli_message`.
"""

from __future__ import annotations


class ExportError(Exception):
    """An export cannot go on; the message says why and, where there is one, the remedy."""

    exit_code = 2  # the request cannot be served as given

    def __init__(self, message: str, *, option: str | None = None) -> None:
        self.template = message
        self.option = option  # the export_model parameter at fault, named by {option} in the message
        super().__init__(message.replace("{option}", option) if option else message)

    def cli_message(self) -> str:
        """The message with the parameter spelled as its command-line flag."""
        if not self.option:
            return str(self)
        return self.template.replace("{option}", "--" + self.option.replace("_", "-"))


class VersionExistsError(ExportError):
    """The version folder is already in the repository and replacing it (``force``) was not asked."""


class CalibrationError(ExportError):
    """Calibration or evaluation images cannot be read."""


class TensorRTUnavailableError(ExportError):
    """TensorRT plans were required (``tensorrt="on"``) where TensorRT or a GPU is missing."""


class ValidationError(ExportError):
    """An artifact disagrees with PyTorch beyond tolerance; nothing was written."""

    exit_code = 1
