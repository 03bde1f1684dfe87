"""Load generator for any KServe v2 gRPC server (``python -m loadtest``) and the benchmarks
(``python -m loadtest.bench``).

This package imports nothing on its own; use ``loadtest.cli.main`` or ``loadtest.sweep.run_loadtest``.
"""
