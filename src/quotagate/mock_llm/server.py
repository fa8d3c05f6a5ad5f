"""Serving the mock with uvicorn, in the caller's event loop or in its own."""

from __future__ import annotations

import asyncio
import logging

import uvicorn

from .app import create_app
from .errors import DroppedConnection
from .settings import MockSettings

# Hung requests hold their connections open; without a limit, shutdown would wait on them forever.
_GRACEFUL_SHUTDOWN_S = 1


class _HideExpectedTracebacks(logging.Filter):
    """uvicorn logs a traceback for every aborted request; the mock aborts some on purpose.

    Injected drops raise ``DroppedConnection``; hung requests still open at shutdown are
    cancelled by uvicorn (which logs that once itself).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DroppedConnection | asyncio.CancelledError)


def _install_drop_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _HideExpectedTracebacks) for f in logger.filters):
        logger.addFilter(_HideExpectedTracebacks())


def make_server(settings: MockSettings) -> uvicorn.Server:
    """A uvicorn server for the mock; run it with ``await server.serve()``.

    ``settings.port = 0`` picks a free port: read it back from ``server.servers``.
    """
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
    )
    server = uvicorn.Server(config)
    _install_drop_filter()  # after Config, which (re)configures uvicorn's loggers
    return server


def run(settings: MockSettings) -> None:
    """Serve until SIGINT or SIGTERM."""
    make_server(settings).run()
