"""`ringmaster serve --workers N`: N processes of the app on one listening socket, under uvicorn's supervisor.

uvicorn starts each worker by importing the app's factory by name (`rollout.api.app:app_from_environment`),
so the settings travel in the environment. The listening socket is bound here rather than by uvicorn: the
one uvicorn binds for its workers leaves the socket's protocol at 0, accepted connections inherit it, and
asyncio then does not turn Nagle's algorithm off on them, so every keep-alive request after the first waits
about 40 ms for the client's delayed ACK (https://github.com/Kludex/uvicorn/issues/3149; bench/ofrep.py
measured 22 requests a second on one connection).
"""

from __future__ import annotations

import logging
import os
import socket

import uvicorn
from uvicorn.supervisors import Multiprocess

from rollout.api.app import WORKERS_SYNC_ADDRESS_ENV, app_from_environment


class ListenError(OSError):
    """The address cannot be listened on."""


def tcp_listener(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port, declared as TCP so that accepted connections get TCP_NODELAY."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        raise ListenError(f"cannot listen on {host}:{port} ({error.strerror}); choose another --port") from error
    listener.set_inheritable(True)
    return listener


def serve_workers(host: str, port: int, sync_port: int | None, workers: int) -> None:
    """Run `workers` processes of the app until SIGINT or SIGTERM; they share the HTTP and the sync port."""
    os.environ[WORKERS_SYNC_ADDRESS_ENV] = f"{host}:{sync_port}" if sync_port else ""
    config = uvicorn.Config(f"{app_from_environment.__module__}:{app_from_environment.__name__}", factory=True,
                            workers=workers, host=host, port=port, log_level="info", timeout_graceful_shutdown=10)
    listener = tcp_listener(host, port)
    logging.getLogger("uvicorn.error").info("serving on http://%s:%d with %d worker processes", host, port, workers)
    try:
        Multiprocess(config, sockets=[listener]).run()
    finally:
        listener.close()
