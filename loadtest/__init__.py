"""Load generator for any KServe v2 server (``python -m loadtest``). It imports nothing from the server:
what it knows of a model comes from the server's ModelMetadata, or from the command line.

This package imports nothing on its own; use ``loadtest.cli.main`` or ``loadtest.sweep.run_loadtest``.
"""
