"""Real peer servers, NVIDIA Triton and Seldon MLServer, serving the ONNX files ``python -m export`` writes.

Interop tests and benchmarks run them next to cnnserve, so "wire-compatible with Triton" and "faster than
the usual Python servers" are checked against the real thing, on this machine, with the same model file.

Setup (once per machine; about 25 s each with a reachable package index)::

    python -m harness.peers setup                 # both; or: setup triton / setup mlserver

Each peer gets a venv of its own, built from the Python that runs the harness (``$CNNSERVE_PEERS_PYTHON``
overrides it) and cached under ``$CNNSERVE_PEERS_CACHE`` (default ``~/.cache/cnnserve/peers``), in a folder
named by the peer and a hash of its pinned versions. A venv counts only once its completion marker is
written; concurrent callers wait on an ``fcntl`` lock; pip runs with a timeout, and anything that goes
wrong (no registry, no stub for this Python, a server that does not come up) raises
:class:`PeerUnavailable` with the reason, which the tests turn into a skip.

Serve one model by hand (until Ctrl-C; prints the gRPC/HTTP/metrics addresses and the log path)::

    python -m harness.peers serve triton --onnx model_repository/lenet5/1/model.onnx --preferred-batch-size 8
    python -m harness.peers serve mlserver --onnx model_repository/lenet5/1/model.onnx --no-declared-inputs

From Python::

    from harness.peers import OnnxModel, triton, mlserver
    model = OnnxModel.from_onnx("model_repository/lenet5/1/model.onnx", max_batch_size=32)
    with triton.serve_onnx([model], work_dir, preferred_batch_sizes=(8,), max_queue_delay_us=0) as server:
        server.grpc_address, server.http_url, server.metrics_url, server.log_path, server.proc
    with mlserver.serve_onnx([model], work_dir, declare_inputs=False, adaptive_batch_size=0) as server:
        ...
    triton.start(triton.ensure(), repo_dir, log_path=..., wait="live")   # any repository as it is

What each peer runs:

- **Triton**: ``tritonserver`` 2.51 from the ``nvidia-pytriton==0.7.0`` wheel (with ``numpy<2`` and
  ``onnxruntime``). The wheel has Triton's C++ server, its gRPC/HTTP front end, dynamic batcher and Python
  backend, but not its ONNX Runtime backend, so a repository as ``python -m export`` writes it (platform
  ``onnxruntime_onnx``) is parsed and then fails with "unable to find backend library for backend
  'onnxruntime'". The peer therefore serves each ONNX file through a Python-backend model
  (``triton_model.py``) that runs it on onnxruntime CPU: what a Python user of this Triton gets, with the
  same input/output names, dims, ``max_batch_size`` and a ``dynamic_batching`` block (delay 0 unless
  asked). The backend's stub embeds the system libpython (the wheel's ``python_backend_stubs/3.X`` stub is
  copied into the backend at install); the venv's ``bin`` goes first on ``PATH`` so the stub's interpreter
  starts inside the venv (numpy<2, onnxruntime), and ``model.py`` also puts the venv's site-packages on
  ``sys.path``.
- **MLServer**: ``mlserver==1.7.1`` with a small custom runtime (``mlserver_runtime.py``, an ``MLModel``
  running onnxruntime CPU; MLServer has no maintained ONNX runtime), one process (``parallel_workers: 0``),
  adaptive batching off unless asked, metrics on their own port or off, and ModelMetadata that lists the
  tensors or not (``declare_inputs``).

Both listen on 127.0.0.1 only, on free ports picked at start, and stop with SIGTERM then SIGKILL.
"""

from harness.peers.common import OnnxModel, PeerServer, PeerUnavailable

__all__ = ["OnnxModel", "PeerServer", "PeerUnavailable"]
