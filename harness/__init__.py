"""The test and benchmark harness: repository entries, server subprocesses, peer servers (Triton, MLServer).

Not part of the product: the wheel does not ship it; tests, benchmarks and examples import it from a
source checkout.
"""
