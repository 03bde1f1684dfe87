"""The tool versions an export records in every manifest."""

from __future__ import annotations

from modelrepo.manifest import package_versions


def tool_versions() -> dict[str, str | None]:
    versions = package_versions("torch", "torchvision", "onnx", "onnxruntime", "onnxscript", "tensorrt")
    if versions.get("onnxruntime") is None:
        versions["onnxruntime"] = package_versions("onnxruntime-gpu").get("onnxruntime-gpu")
    return versions
