import json

import numpy as np
import pytest
from PIL import Image

from modelrepo.config import ConfigError, make_config, read_config, write_config
from modelrepo.layout import model_names, read_labels, versions, write_labels
from modelrepo.manifest import Manifest, ManifestError, sha256_file
from modelrepo.preprocess import (
    IMAGENET_INPUT,
    ImageDecodeError,
    InputSpec,
    preprocess_bytes,
    preprocess_image,
)


def _manifest(**over):
    base = dict(
        model="lenet5", source_model="lenet5", precision="fp32", artifact="model.onnx",
        format="onnx", sha256="0" * 64, preprocessing=IMAGENET_INPUT.to_dict(),
        inputs=[{"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}],
        outputs=[{"name": "logits", "datatype": "FP32", "shape": [-1, 1000]}],
    )  # fmt: skip
    return Manifest(**{**base, **over})


def test_manifest_round_trip(tmp_path):
    m = _manifest(validation={"top1_agreement": 1.0})
    m.write(tmp_path)
    back = Manifest.read(tmp_path)
    assert back == m
    assert back.input_spec == IMAGENET_INPUT


def test_manifest_errors(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        Manifest.read(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"model": "x"}))
    with pytest.raises(ManifestError, match=r"lacks required field.*sha256"):
        Manifest.read(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(ManifestError, match="not readable JSON"):
        Manifest.read(tmp_path)
    with pytest.raises(ManifestError, match="precision must be one of"):
        _manifest(precision="fp8")


def test_config_round_trip(tmp_path):
    cfg = make_config(
        "resnet50", platform="onnxruntime_onnx", max_batch_size=32, input_shape=[3, 224, 224],
        num_classes=1000, preferred_batch_sizes=[8, 16], max_queue_delay_microseconds=500,
        max_queue_size=128, instance_count=2, parameters={"precision": "fp32"},
    )  # fmt: skip
    write_config(tmp_path, cfg)
    text = (tmp_path / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in text and "max_queue_delay_microseconds: 500" in text
    back = read_config(tmp_path)
    assert back == cfg
    assert list(back.input[0].dims) == [3, 224, 224]
    assert back.dynamic_batching.default_queue_policy.max_queue_size == 128
    assert back.parameters["precision"].string_value == "fp32"


def test_bad_config(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        read_config(tmp_path)
    (tmp_path / "config.pbtxt").write_text("max_batch_size: banana")
    with pytest.raises(ConfigError, match="not a valid ModelConfig"):
        read_config(tmp_path)


def test_layout(tmp_path):
    for name in ("a", "b", ".staging-c"):
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "config.pbtxt").write_text("")
    (tmp_path / "a" / "10").mkdir()
    (tmp_path / "a" / "notes").mkdir()
    (tmp_path / "no_config").mkdir()
    assert model_names(tmp_path) == ["a", "b"]
    assert versions(tmp_path / "a") == [1, 10]
    write_labels(tmp_path / "a", ["cat", "dog"])
    assert read_labels(tmp_path / "a") == ["cat", "dog"]
    assert read_labels(tmp_path / "b") is None


def test_sha256(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    assert sha256_file(tmp_path / "f").startswith("ba7816bf")


def test_preprocess_crop_and_normalize():
    img = Image.new("RGB", (320, 256), (255, 0, 0))
    arr = preprocess_image(img, IMAGENET_INPUT)
    assert arr.shape == (3, 224, 224) and arr.dtype == np.float32
    np.testing.assert_allclose(arr[:, 0, 0], [(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225],
                               rtol=1e-5)  # fmt: skip


def test_preprocess_grayscale_resize_from_png():
    import io

    spec = InputSpec(1, 32, 32, (0.5,), (0.5,), "L")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 255, 255)).save(buf, format="PNG")
    arr = preprocess_bytes(buf.getvalue(), spec)
    assert arr.shape == (1, 32, 32)
    np.testing.assert_allclose(arr, 1.0)


def test_undecodable_image():
    with pytest.raises(ImageDecodeError, match="cannot decode image: 5 bytes are not an image"):
        preprocess_bytes(b"hello", IMAGENET_INPUT)


def test_bad_spec():
    with pytest.raises(ValueError, match="does not give 3 channels"):
        InputSpec(3, 32, 32, (0.5,), (0.5,), "L")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"artifact": "../../etc/passwd"}, "artifact must be a file name inside the version folder"),
        ({"artifact": "sub/model.onnx"}, "artifact must be a file name inside the version folder"),
        ({"sha256": "not-hex"}, "sha256 must be 64 lower-case hex digits"),
        ({"preprocessing": "imagenet"}, "field 'preprocessing' must be dict, got str"),
        ({"inputs": {"name": "input"}}, "field 'inputs' must be list"),
        ({"labels": ["a", 2]}, "labels must be a list of strings"),
        ({"schema": "1"}, "field 'schema' must be int"),
        (
            {
                "alternatives": [
                    {"file": "/abs.pt2", "format": "torch_export", "sha256": "0" * 64, "precision": "fp32"}
                ]
            },
            r"alternatives\[0\]: file must be a file name inside the version folder",
        ),
        ({"alternatives": [{"file": "m.pt2"}]}, r"alternatives\[0\]: "),
        ({"alternatives": ["model.pt2"]}, r"alternatives\[0\] must be an object"),
        (
            {"alternatives": [{"file": "m.pt2", "format": "pt2", "sha256": "0" * 64, "precision": "fp32"}]},
            "format must be one of",
        ),
        (
            {
                "alternatives": [
                    {"file": "model.onnx", "format": "onnx", "sha256": "0" * 64, "precision": "fp32"}
                ]
            },
            "artifacts must be distinct files",
        ),
        ({"notes": [1]}, "notes must be a list of strings"),
        ({"schema": 3}, "manifest schema 3 is not one this server reads"),
        (
            {
                "schema": 1,
                "fallback": {"file": "/abs.onnx", "format": "onnx", "sha256": "0" * 64, "precision": "fp32"},
            },
            "fallback: file must be a file name",
        ),
        ({"schema": 1, "fallback": {"file": "m.onnx"}}, "fallback: "),
    ],
)
def test_hostile_manifest_fields_are_refused_naming_the_field(override, message):
    with pytest.raises(ManifestError, match=message):
        Manifest.from_dict({**_manifest().to_dict(), **override})


def test_unreadable_files_are_manifest_and_config_errors(tmp_path):
    (tmp_path / "manifest.json").write_bytes(b"\xff\xfe{not utf-8")
    with pytest.raises(ManifestError, match="not readable JSON"):
        Manifest.read(tmp_path)
    (tmp_path / "config.pbtxt").write_bytes(b'name: "\xff\xfe"')
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        read_config(tmp_path)


def test_schema_1_manifests_are_read_as_they_are_on_disk(tmp_path):
    """A schema-1 plan entry (artifact + fallback, the fallback's validation inside the plan's) reads as
    a primary with one alternative, and is written back as schema 2."""
    plan_validation = {"runtime": "tensorrt", "fallback": {"runtime": "onnxruntime CPUExecutionProvider"}}
    schema1 = {
        **_manifest().to_dict(),
        "schema": 1,
        "artifact": "model.plan",
        "format": "tensorrt_plan",
        "sha256": "1" * 64,
        "validation": plan_validation,
        "versions": {"tensorrt": "10.3.0"},
        "gpu": {"compute_capability": "8.6"},
        "fallback": {
            "file": "model.onnx",
            "format": "onnx",
            "sha256": "2" * 64,
            "precision": "fp32",
            "extra": {},
        },
    }
    for key in ("alternatives", "notes"):
        del schema1[key]
    (tmp_path / "manifest.json").write_text(json.dumps(schema1))
    m = Manifest.read(tmp_path)
    assert [(a.file, a.format, a.sha256[0]) for a in m.artifacts] == [
        ("model.plan", "tensorrt_plan", "1"),
        ("model.onnx", "onnx", "2"),
    ]
    assert m.primary.extra == {"compute_capability": "8.6", "tensorrt": "10.3.0"}
    assert m.fallback.validation == {"runtime": "onnxruntime CPUExecutionProvider"}
    m.write(tmp_path)
    written = json.loads((tmp_path / "manifest.json").read_text())
    assert written["schema"] == 2 and "fallback" not in written
    assert Manifest.read(tmp_path) == m


def test_schema_2_keeps_the_primary_where_schema_1_readers_find_it(tmp_path):
    from modelrepo.manifest import Artifact

    program = Artifact(
        "model.pt2", "torch_export", "3" * 64, "fp16", {"runtime": "torch"}, {"dtype": "float16"}
    )
    m = _manifest(precision="fp16", alternatives=[program], notes=["why"])
    m.write(tmp_path)
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert (on_disk["artifact"], on_disk["format"], on_disk["sha256"]) == ("model.onnx", "onnx", "0" * 64)
    assert on_disk["alternatives"][0]["file"] == "model.pt2" and on_disk["notes"] == ["why"]
    back = Manifest.read(tmp_path)
    assert back == m and [a.file for a in back.artifacts] == ["model.onnx", "model.pt2"]
    back.fallback = None  # schema 1's in-memory view still works for code written against it
    assert back.artifacts == [back.primary]
