# cnnserve images. Two targets:
#   docker build --target cpu -t cnnserve:0.1.0-cpu .
#   docker build --target gpu -t cnnserve:0.1.0-gpu .
# The model repository is mounted at /models at run time (read-only is enough), or baked into an image of
# your own: FROM cnnserve:0.1.0-cpu + COPY model_repository/ /models/ (docs/DEPLOY.md).
# Builders: BuildKit (docker build, buildx) and Docker's classic builder (DOCKER_BUILDKIT=0, Debian's
# docker.io 20.10) alike: no RUN --mount, no build contexts, no syntax directive to fetch.
# Behind a TLS-intercepting proxy, put its CA bundle at build-ca/ca.pem (git-ignored): only the install
# stage reads it, so no image that ships carries it.

# GPU base: CUDA 12.x + TensorRT 10 + Python 3.12. Stay on a CUDA 12 tag: onnxruntime-gpu's PyPI wheels
# are built for CUDA 12 / cuDNN 9.
ARG GPU_BASE_IMAGE=nvcr.io/nvidia/tensorrt:25.06-py3
# CPU base: any image with a `python` (3.10+) on PATH that may create a venv (python:*-slim; or a local
# Debian base made with debootstrap where no registry is reachable: harness/image.py).
ARG CPU_BASE_IMAGE=python:3.11-slim

# ---- install: the project's wheel (the gpu target installs it too), and the server alone (no extras) in
# a venv, at the exact versions the test suite passed with (constraints.txt, scripts/lock.sh). It serves
# ONNX models on onnxruntime, without torch (model.pt2 entries need the export extra). Nothing of this
# stage ships but the venv.
FROM ${CPU_BASE_IMAGE} AS install
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY . /src
RUN if [ -s /src/build-ca/ca.pem ]; then export PIP_CERT=/src/build-ca/ca.pem; fi \
 && python -m pip wheel --no-deps --wheel-dir /tmp/wheels /src \
 && cp /src/constraints.txt /tmp/wheels/constraints.txt \
 && python -m venv /opt/cnnserve \
 && /opt/cnnserve/bin/python -m pip install -c /tmp/wheels/constraints.txt /tmp/wheels/cnnserve-*.whl

# ---- cpu: the base image and the install stage's venv, nothing else.
FROM ${CPU_BASE_IMAGE} AS cpu
COPY --from=install /opt/cnnserve /opt/cnnserve
RUN groupadd --system --gid 10001 cnnserve \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/cnnserve --create-home \
        --shell /usr/sbin/nologin cnnserve \
 && mkdir -p /models
# Settings are SERVE_* variables (docs/ARCHITECTURE.md); the manifests in deploy/ override them.
ENV PATH=/opt/cnnserve/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SERVE_REPO=/models \
    SERVE_HOST=0.0.0.0 \
    SERVE_HTTP_PORT=8000 \
    SERVE_GRPC_PORT=8001 \
    SERVE_METRICS_PORT=8002 \
    SERVE_HEALTH_PORT=8003 \
    SERVE_GRACE_PERIOD_SECONDS=30 \
    SERVE_DEVICE=cpu \
    SERVE_LOG_LEVEL=info \
    XDG_CACHE_HOME=/tmp/.cache
WORKDIR /home/cnnserve
USER 10001:10001
EXPOSE 8000 8001 8002 8003
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD python -m service.healthcheck --address "127.0.0.1:${SERVE_HEALTH_PORT}" --timeout 3
ENTRYPOINT ["python", "-m", "service"]

# ---- gpu: NVIDIA TensorRT base (CUDA, cuDNN, TensorRT and its Python bindings), project with the gpu extra.
FROM ${GPU_BASE_IMAGE} AS gpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1
# NGC images ship python3; the entrypoint and healthcheck call `python`.
RUN command -v python >/dev/null || ln -s "$(command -v python3)" /usr/local/bin/python
# torch built for CUDA 12 like the base, from PyTorch's index (PyPI's default CUDA build may differ).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
RUN python -m pip install --index-url "${TORCH_INDEX_URL}" "torch>=2.5,<3" "torchvision>=0.20"
# The base dependencies list onnxruntime and the gpu extra onnxruntime-gpu; both install the same
# `onnxruntime` module, so the CPU one is removed and the GPU one reinstalled over the shared files.
COPY --from=install /tmp/wheels /tmp/wheels
RUN python -m pip install -c /tmp/wheels/constraints.txt "$(echo /tmp/wheels/cnnserve-*.whl)[gpu]" \
 && ort_version="$(python -c 'import importlib.metadata as m; print(m.version("onnxruntime-gpu"))')" \
 && python -m pip uninstall -y onnxruntime \
 && python -m pip install --force-reinstall --no-deps "onnxruntime-gpu==${ort_version}" \
 && rm -rf /tmp/wheels
RUN groupadd --system --gid 10001 cnnserve \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/cnnserve --create-home \
        --shell /usr/sbin/nologin cnnserve \
 && mkdir -p /models
ENV SERVE_REPO=/models \
    SERVE_HOST=0.0.0.0 \
    SERVE_HTTP_PORT=8000 \
    SERVE_GRPC_PORT=8001 \
    SERVE_METRICS_PORT=8002 \
    SERVE_HEALTH_PORT=8003 \
    SERVE_GRACE_PERIOD_SECONDS=30 \
    SERVE_DEVICE=cuda \
    SERVE_LOG_LEVEL=info \
    XDG_CACHE_HOME=/tmp/.cache \
    CUDA_CACHE_PATH=/tmp/.nv/ComputeCache
WORKDIR /home/cnnserve
USER 10001:10001
EXPOSE 8000 8001 8002 8003
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD python -m service.healthcheck --address "127.0.0.1:${SERVE_HEALTH_PORT}" --timeout 3
ENTRYPOINT ["python", "-m", "service"]
