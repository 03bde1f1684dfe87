"""Every name the repository contract shares: files, artifact formats, tensor names.

Export writes these names, the server reads them, tests and tools refer to them: change one here and
every side follows.
"""

from __future__ import annotations

CONFIG_NAME = "config.pbtxt"
LABELS_NAME = "labels.txt"
MANIFEST_NAME = "manifest.json"

# artifact format -> (Triton platform, file name in the version folder)
FORMATS = {
    "onnx": ("onnxruntime_onnx", "model.onnx"),
    "tensorrt_plan": ("tensorrt_plan", "model.plan"),
    "torch_export": ("pytorch_torch_export", "model.pt2"),
}
# Triton has no torch.export platform; a model.pt2 entry names this backend in config.pbtxt instead.
TORCH_BACKEND = "pytorch"
PRECISIONS = ("fp32", "fp16", "int8")

# The tensors of a served CNN (docs/ARCHITECTURE.md): the artifact's input and output, and the
# inputs the server derives from it.
INPUT_NAME = "input"  # FP32 [N, C, H, W], already normalized
OUTPUT_NAME = "logits"  # FP32 [N, classes]
IMAGE_INPUT = "image"  # BYTES [N]: one encoded image per row, decoded and normalized by the server
PIXELS_INPUT = "pixels"  # UINT8 [N, H, W, C] at the model's input size, normalized by the server
BATCH_AXIS = "batch"  # the dynamic axis name of every artifact


def artifact_file(fmt: str) -> str:
    """The file name an artifact of format ``fmt`` has in its version folder."""
    return FORMATS[fmt][1]


def platform_of(fmt: str) -> str:
    return FORMATS[fmt][0]
