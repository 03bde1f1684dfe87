"""A batch's logits as the response's output: FP32 logits, or Triton's classification strings."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.dataplane.types import InferRequest, InferResponse, OutputTensor
from service.serving import ServedVersion


def classification_strings(logits: np.ndarray, k: int, labels: Sequence[str] | None) -> list[bytes]:
    """Triton's classification output: per row the top-k as "score:index[:label]", best first."""
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    out = []
    for row, indices in zip(logits, top, strict=True):
        for i in indices:
            text = f"{row[i]:f}:{i}" + (f":{labels[i]}" if labels else "")
            out.append(text.encode())
    return out


def build_response(
    request: InferRequest, served: ServedVersion, logits: np.ndarray, top_k: int
) -> InferResponse:
    io = served.io
    rows = logits.shape[0]
    if top_k:
        strings = classification_strings(logits, top_k, io.labels)
        output = OutputTensor(io.output_name, "BYTES", (rows, top_k), strings)
    else:
        output = OutputTensor(io.output_name, "FP32", (rows, io.num_classes), logits)
    return InferResponse(served.name, served.version_str, request.id, [output])
