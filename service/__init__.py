"""The cnnserve inference server: KServe v2 over gRPC and HTTP (Triton-compatible), dynamic batching,
Prometheus metrics.

Run it with ``python -m service --repo model_repository``; call it with :mod:`service.client`.
"""
