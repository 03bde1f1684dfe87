"""MLServer custom runtime that runs an ONNX file on onnxruntime (CPU); MLServer has no maintained one.

``harness.peers.mlserver`` copies this file beside each model's ``model-settings.json`` as
``cnnserve_onnx_runtime.py`` (MLServer imports ``implementation`` with the model folder on sys.path). It
runs only inside the MLServer peer venv. Like MLServer's own runtimes, ``predict`` calls the model
directly; with adaptive batching on, MLServer merges requests into one ``predict`` call.
"""

import os

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        path = await get_model_uri(self.settings)
        extra = (self.settings.parameters.extra if self.settings.parameters else None) or {}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(extra.get("intra_op_threads") or len(os.sched_getaffinity(0)))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name
        self._input_name = extra.get("input_name") or self._input
        self._output_name = extra.get("output_name") or self._output
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        found = [i for i in payload.inputs if i.name == self._input_name]
        if len(found) != 1:
            raise InferenceError(f"expected one input named {self._input_name!r}")
        batch = NumpyCodec.decode_input(found[0])
        if batch.dtype != np.float32:
            raise InferenceError(f"input {self._input_name!r} must be FP32, got {found[0].datatype}")
        logits = self._session.run([self._output], {self._input: batch})[0]
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(self._output_name, logits)],
        )
