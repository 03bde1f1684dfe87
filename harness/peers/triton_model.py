"""Triton Python-backend model that runs an ONNX file on onnxruntime (CPU).

``harness.peers.triton`` copies this file to ``<repo>/<model>/<version>/model.py`` beside ``model.onnx``. It
runs inside Triton's ``triton_python_backend_stub``, which embeds the system libpython: the peer venv's
site-packages (onnxruntime, numpy) come from the ``site_packages`` parameter of config.pbtxt. Requests
that the dynamic batcher hands over together run as one onnxruntime call, and their rows are split back.
"""

import json
import os
import sys


def _parameters(config):
    return {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = _parameters(config)
        site = params.get("site_packages", "")
        if site and site not in sys.path:
            sys.path.insert(0, site)
        import numpy as np
        import onnxruntime as ort
        import triton_python_backend_utils as pb_utils

        if site and not os.path.realpath(np.__file__).startswith(os.path.realpath(site)):
            # an outside numpy (the stub imports numpy at startup) silently yields empty outputs
            raise RuntimeError(
                f"numpy {np.__version__} from {np.__file__} is not the peer venv's ({site}); "
                "start tritonserver with PYTHONPATH set to that site-packages"
            )
        self.np, self.pb_utils = np, pb_utils
        path = os.path.join(
            args["model_repository"], args["model_version"], params.get("onnx_file", "model.onnx")
        )
        threads = int(params.get("intra_op_threads") or 0) or len(os.sched_getaffinity(0))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.onnx_input = self.session.get_inputs()[0].name
        self.onnx_output = self.session.get_outputs()[0].name
        pb_utils.Logger.log_info(
            f"{args['model_name']}: onnxruntime {ort.__version__} CPU, {threads} intra-op threads, {path}"
        )

    def execute(self, requests):
        np, pb_utils = self.np, self.pb_utils
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        rows = [len(a) for a in arrays]
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        try:
            logits = self.session.run([self.onnx_output], {self.onnx_input: batch})[0]
        except Exception as e:  # one failing batch fails its requests, not the model
            error = pb_utils.TritonError(f"onnxruntime: {e}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        parts = np.split(logits, np.cumsum(rows)[:-1])
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, part)])
            for part in parts
        ]
