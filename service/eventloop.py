"""The event loop the server (and the do-nothing benchmark server) runs on."""

from __future__ import annotations

import asyncio
import logging
import sys


def run(coroutine):
    """Run on uvloop's event loop where it is installed (it comes with uvicorn[standard]): grpc.aio and the
    HTTP front end spend much of their time in the loop's machinery, which uvloop runs in C."""
    log = logging.getLogger("service")
    try:
        import uvloop
    except ImportError:
        log.info("event loop: asyncio (uvloop is not installed)")
        return asyncio.run(coroutine)
    log.info("event loop: uvloop %s", uvloop.__version__)
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coroutine)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return asyncio.run(coroutine)
