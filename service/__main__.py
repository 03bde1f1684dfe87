"""``python -m service --repo DIR [--grpc-port 8001] [--http-port 8000] [--metrics-port 8002] [...]``:
KServe v2 over gRPC and HTTP; ``--help`` lists every flag and its ``SERVE_*`` variable."""

from __future__ import annotations

import logging
import sys

from service.settings import SettingsError, build_parser, load_settings


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except SettingsError as e:
        build_parser().error(str(e))
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from service.app import serve  # after logging is configured; imports grpc and the backends' deps
    from service.eventloop import run

    try:
        return run(serve(settings))
    except SettingsError as e:  # what only the server can check (restriction specs)
        build_parser().error(str(e))
    except OSError as e:
        logging.getLogger("service").error("%s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
