"""``config.pbtxt``: Triton's ``ModelConfig`` in protobuf text format.

What Triton's schema has no field for goes into ``parameters`` (string values).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from google.protobuf import text_format

from modelrepo.names import CONFIG_NAME, INPUT_NAME, LABELS_NAME, OUTPUT_NAME
from protos import model_config_pb2 as mc


class ConfigError(ValueError):
    """config.pbtxt is missing or not a valid ModelConfig."""


def read_config(model_dir: str | os.PathLike) -> mc.ModelConfig:
    path = Path(model_dir) / CONFIG_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text: {e}") from None
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except (text_format.ParseError, ValueError) as e:
        raise ConfigError(f"{path} is not a valid ModelConfig: {e}") from None


def write_config(model_dir: str | os.PathLike, config: mc.ModelConfig) -> Path:
    path = Path(model_dir) / CONFIG_NAME
    tmp = path.with_name(CONFIG_NAME + ".tmp")
    tmp.write_text(text_format.MessageToString(config))
    os.replace(tmp, path)
    return path


def make_config(
    name: str,
    *,
    platform: str,
    max_batch_size: int,
    input_shape: Sequence[int],
    num_classes: int,
    input_name: str = INPUT_NAME,
    output_name: str = OUTPUT_NAME,
    labels_file: str | None = LABELS_NAME,
    preferred_batch_sizes: Sequence[int] = (),
    max_queue_delay_microseconds: int = 0,
    max_queue_size: int = 0,
    instance_count: int = 1,
    instance_kind: str = "KIND_AUTO",
    parameters: Mapping[str, str] | None = None,
) -> mc.ModelConfig:
    """A served CNN: one FP32 NCHW input (batch dim implicit, as in Triton), FP32 logits out."""
    cfg = mc.ModelConfig(name=name, platform=platform, max_batch_size=max_batch_size)
    cfg.input.add(name=input_name, data_type=mc.TYPE_FP32, format=mc.ModelInput.FORMAT_NCHW,
                  dims=list(input_shape))  # fmt: skip
    out = cfg.output.add(name=output_name, data_type=mc.TYPE_FP32, dims=[num_classes])
    if labels_file:
        out.label_filename = labels_file
    if max_batch_size > 0:
        db = cfg.dynamic_batching
        db.preferred_batch_size.extend(preferred_batch_sizes)
        db.max_queue_delay_microseconds = max_queue_delay_microseconds
        if max_queue_size:
            db.default_queue_policy.max_queue_size = max_queue_size
    cfg.instance_group.add(count=instance_count, kind=mc.ModelInstanceGroup.Kind.Value(instance_kind))
    for key, value in (parameters or {}).items():
        cfg.parameters[key].string_value = str(value)
    return cfg
