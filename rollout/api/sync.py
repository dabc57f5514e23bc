"""flagd's sync gRPC service (`flagd.sync.v1.FlagSyncService`), so stock in-process flagd providers
of every language are Ringmaster clients.

`SyncFlags` streams the whole document (`flag_configuration`) at connect and again on every change;
`FetchAllFlags` answers it once; `GetMetadata` (deprecated in flagd) answers an empty struct, as
Ringmaster adds no static context to evaluations. A selector, from the `Flagd-Selector` metadata
header or else the request's `selector` field, narrows the document to one flag set
(`flagSetId=<set>`).

The server runs on a port of its own (`ringmaster serve --sync-port`, flagd's 8015 by default) in a
thread with its own event loop, so a thousand open streams never delay an HTTP request.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import grpc
from google.protobuf.struct_pb2 import Struct
from openfeature.schemas.protobuf.flagd.sync.v1 import sync_pb2, sync_pb2_grpc

from rollout.flags.document import Selector, parse_selector
from rollout.flags.errors import InvalidSelector
from rollout.flags.publisher import FlagPublisher, PublisherStopped

DEFAULT_SYNC_PORT = 8015
SELECTOR_HEADER = "flagd-selector"
START_TIMEOUT_S = 10.0
SERVER_OPTIONS = [
    # Without this a second server could bind the same port on Linux and share its clients.
    ("grpc.so_reuseport", 0),
    # Providers may send keepalive pings on an idle stream; accept them instead of closing the stream.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    # Find streams whose client vanished without closing them.
    ("grpc.keepalive_time_ms", 60_000),
]

SyncFlagsContext = grpc.aio.ServicerContext[sync_pb2.SyncFlagsRequest, sync_pb2.SyncFlagsResponse]
FetchAllFlagsContext = grpc.aio.ServicerContext[sync_pb2.FetchAllFlagsRequest, sync_pb2.FetchAllFlagsResponse]
GetMetadataContext = grpc.aio.ServicerContext[sync_pb2.GetMetadataRequest, sync_pb2.GetMetadataResponse]


async def _selector(requested: str, context: SyncFlagsContext | FetchAllFlagsContext) -> Selector:
    # The header wins over the deprecated request field, as in flagd.
    header = dict(context.invocation_metadata() or ()).get(SELECTOR_HEADER)
    text = header if isinstance(header, str) else requested
    try:
        return parse_selector(text)
    except InvalidSelector as error:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))


class FlagSyncService(sync_pb2_grpc.FlagSyncServiceServicer):
    def __init__(self, publisher: FlagPublisher) -> None:
        self._publisher = publisher

    async def SyncFlags(
        self, request: sync_pb2.SyncFlagsRequest, context: SyncFlagsContext
    ) -> AsyncIterator[sync_pb2.SyncFlagsResponse]:
        selector = await _selector(request.selector, context)
        sent: str | None = None
        async with self._publisher.subscribe() as documents:
            while True:
                try:
                    published = await documents.next()
                except PublisherStopped:
                    return
                rendering = published.render(selector)
                if rendering.etag != sent:  # unchanged when the change was outside the selected flag set
                    sent = rendering.etag
                    yield sync_pb2.SyncFlagsResponse(flag_configuration=rendering.text)

    async def FetchAllFlags(
        self, request: sync_pb2.FetchAllFlagsRequest, context: FetchAllFlagsContext
    ) -> sync_pb2.FetchAllFlagsResponse:
        selector = await _selector(request.selector, context)
        published = self._publisher.current
        if published is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"no flag document yet: {self._publisher.last_error or 'not compiled yet'}")
        return sync_pb2.FetchAllFlagsResponse(flag_configuration=published.render(selector).text)

    async def GetMetadata(
        self, request: sync_pb2.GetMetadataRequest, context: GetMetadataContext
    ) -> sync_pb2.GetMetadataResponse:
        # Providers merge this struct into every evaluation context; Ringmaster has nothing to add.
        return sync_pb2.GetMetadataResponse(metadata=Struct())


class SyncServer:
    """The sync service on its own thread and event loop, started and stopped from the outside."""

    def __init__(self, publisher: FlagPublisher, host: str, port: int, *, shared_port: bool = False) -> None:
        """`shared_port`: other processes (the workers of one `serve --workers N`) listen on the port too, and
        the kernel spreads new streams over them."""
        self._publisher = publisher
        self._host = host
        self._requested_port = port
        self._options = [(name, int(shared_port) if name == "grpc.so_reuseport" else value)
                         for name, value in SERVER_OPTIONS]
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._grace_s = 1.0
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Bind and start serving; returns the port (useful when 0 asked for any free one)."""
        self._thread = threading.Thread(target=self._run, name="ringmaster-flagd-sync", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise RuntimeError(f"the flagd sync service did not start within {START_TIMEOUT_S:g} s")
        if self._startup_error is not None:
            raise RuntimeError(f"the flagd sync service cannot listen on {self._host}:{self._requested_port}: "
                               f"{self._startup_error}; choose another --sync-port, or 0 to turn it off"
                               ) from self._startup_error
        assert self.port is not None
        return self.port

    def stop(self, grace_s: float = 1.0) -> None:
        """Close every stream (after `grace_s` for calls in flight) and stop the thread."""
        self._grace_s = grace_s
        if self._loop is not None and self._stop_requested is not None:
            self._loop.call_soon_threadsafe(self._stop_requested.set)
        if self._thread is not None:
            self._thread.join(grace_s + START_TIMEOUT_S)
            self._thread = None

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:  # reported to start(), which is waiting for the outcome
            self._startup_error = error
            self._ready.set()

    async def _serve(self) -> None:
        server = grpc.aio.server(options=self._options)
        sync_pb2_grpc.add_FlagSyncServiceServicer_to_server(FlagSyncService(self._publisher), server)
        self.port = server.add_insecure_port(f"{self._host}:{self._requested_port}")
        await server.start()
        self._loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        self._ready.set()
        await self._stop_requested.wait()
        await server.stop(grace=self._grace_s)
