"""The front ends: KServe v2 over gRPC (:mod:`.grpc_server`, messages in :mod:`.grpc_codec`) and over
HTTP/REST (:mod:`.http_server`, bodies in :mod:`.http_codec`), translating wire messages to the data
plane's plain objects and back."""
