"""The on-disk model repository shared by ``export`` (writer) and ``service`` (reader).

Triton's layout: ``<repo>/<model>/config.pbtxt``, optional ``labels.txt``, numeric version folders each
holding the artifact and our ``manifest.json``. Nothing here imports torch, so the server can read a
repository without it.
"""
