"""How long a flag change takes to reach every connected stream: from the API call until the last
stream holds the new document.

Two `ringmaster serve` processes (replicas) share one database. For 1, 100 and 1,000 connected
gRPC `SyncFlags` streams (and as many SSE streams), a flag is changed through the API several
times; each change's latency is the time from sending the request until the last stream has
received a document holding it. Rows:

* same replica: the streams are on the replica that took the change, which refreshes at once;
* other replica: the streams are on the other replica, which finds the change by polling the
  database's change marker every 200 ms;
* baseline: one client polling flags.json every 5 s with If-None-Match, which is what flagd's HTTP
  sync source does by default (`flagd start --uri .../flagd/v1/flags.json`).

The streams are clients in this one process (grpc.aio and httpx on one event loop), so at 1,000
streams part of what is measured is this process reading 1,000 messages. Run:
`python -m bench.propagation [--changes 10] [--opt-ins 2000] [--postgres] [--no-baseline]`; `--opt-ins`
makes the document larger (the default set's evaluator then lists that many opted-in users).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import resource
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
from openfeature.schemas.protobuf.flagd.sync.v1 import sync_pb2, sync_pb2_grpc

from bench.usage_ingest import postgres_database, sqlite_database
from cohorts.db import make_engine, upgrade
from cohorts.store import CohortStore
from rollout.auth.tokens import TokenStore

STREAM_COUNTS = (1, 100, 1000)
STREAMS_PER_CHANNEL = 100
POLL_INTERVAL_S = 5.0
CHANGE_TIMEOUT_S = 60.0
FLAG: dict[str, Any] = {
    "key": "new-checkout",
    "type": "boolean",
    "variants": {"on": True, "off": False},
    "defaultVariant": "off",
    "targeting": {"rings": {"cohortSet": "default", "variants": {"canary": "on"}, "otherwise": "off"}},
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Replica:
    base_url: str
    sync_port: int
    process: subprocess.Popen[bytes]


@contextmanager
def replicas(database_url: str, count: int, log_dir: Path, options: Sequence[str] = ()) -> Iterator[list[Replica]]:
    """`count` serve processes on the database, each with its own HTTP and sync port, and `options` of serve."""
    started: list[Replica] = []
    environment = {**os.environ, "RINGMASTER_DATABASE_URL": database_url}
    try:
        for number in range(count):
            port, sync_port = free_port(), free_port()
            log = (log_dir / f"serve-{number}.log").open("wb")
            process = subprocess.Popen(
                [sys.executable, "-m", "rollout", "serve", "--port", str(port), "--sync-port", str(sync_port),
                 *options],
                env=environment, stdout=log, stderr=subprocess.STDOUT)
            started.append(Replica(f"http://127.0.0.1:{port}", sync_port, process))
        for replica in started:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{replica.base_url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if replica.process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"serve did not start; see {log_dir}")
                time.sleep(0.1)
        yield started
    finally:
        for replica in started:
            replica.process.terminate()
        for replica in started:
            try:
                replica.process.wait(15)
            except subprocess.TimeoutExpired:
                replica.process.kill()


@dataclass
class Arrivals:
    """For each change (by its token), how many streams have it and when the last one got it."""

    streams: int
    counts: dict[str, int] = field(default_factory=dict)
    done: dict[str, asyncio.Event] = field(default_factory=dict)
    last_s: dict[str, float] = field(default_factory=dict)
    connected: int = 0
    all_connected: asyncio.Event = field(default_factory=asyncio.Event)

    def expect(self, token: str) -> None:
        self.counts[token] = 0
        self.done[token] = asyncio.Event()

    def received(self, text: str, first: bool) -> None:
        now_s = time.monotonic()
        if first:
            self.connected += 1
            if self.connected == self.streams:
                self.all_connected.set()
        for token, count in self.counts.items():
            if count < self.streams and f'"benchChange":"{token}"' in text:
                self.counts[token] = count + 1
                if count + 1 == self.streams:
                    self.last_s[token] = now_s
                    self.done[token].set()


@contextlib.asynccontextmanager
async def grpc_streams(replica: Replica, arrivals: Arrivals) -> AsyncIterator[None]:
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{replica.sync_port}")
                for _ in range(-(-arrivals.streams // STREAMS_PER_CHANNEL))]

    async def follow(stub: sync_pb2_grpc.FlagSyncServiceAsyncStub) -> None:
        first = True
        async for response in stub.SyncFlags(sync_pb2.SyncFlagsRequest()):
            arrivals.received(response.flag_configuration, first)
            first = False

    stubs = [sync_pb2_grpc.FlagSyncServiceStub(channel) for channel in channels]
    tasks = [asyncio.create_task(follow(stubs[number // STREAMS_PER_CHANNEL])) for number in range(arrivals.streams)]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            await channel.close()


@contextlib.asynccontextmanager
async def sse_streams(replica: Replica, arrivals: Arrivals) -> AsyncIterator[None]:
    limits = httpx.Limits(max_connections=arrivals.streams + 10, max_keepalive_connections=0)
    client = httpx.AsyncClient(base_url=replica.base_url, limits=limits, timeout=httpx.Timeout(30, read=None))

    async def follow() -> None:
        first = True
        async with client.stream("GET", "/flagd/v1/stream") as response:
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    arrivals.received(line, first)
                    first = False

    tasks = [asyncio.create_task(follow()) for _ in range(arrivals.streams)]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.aclose()


async def change(api: httpx.AsyncClient, token: str) -> None:
    response = await api.put(f"/api/v1/flags/{FLAG['key']}", json={**FLAG, "metadata": {"benchChange": token}})
    response.raise_for_status()


async def measure(kind: str, streams_on: Replica, changes_through: Replica, streams: int,
                  changes: int, headers: dict[str, str]) -> list[float]:
    """Latencies (s) of `changes` flag changes until all `streams` streams of `kind` have each."""
    arrivals = Arrivals(streams)
    follow = grpc_streams if kind == "gRPC" else sse_streams
    latencies = []
    async with follow(streams_on, arrivals), httpx.AsyncClient(base_url=changes_through.base_url, timeout=30,
                                                               headers=headers) as api:
        await asyncio.wait_for(arrivals.all_connected.wait(), CHANGE_TIMEOUT_S)
        for _ in range(changes):
            token = secrets.token_hex(6)
            arrivals.expect(token)
            started_s = time.monotonic()
            await change(api, token)
            await asyncio.wait_for(arrivals.done[token].wait(), CHANGE_TIMEOUT_S)
            latencies.append(arrivals.last_s[token] - started_s)
            await asyncio.sleep(0.1)
    return latencies


async def poll_baseline(replica: Replica, changes: int, headers: dict[str, str]) -> list[float]:
    """One client polling flags.json every POLL_INTERVAL_S; changes land at random points of its cycle."""
    latencies = []
    async with httpx.AsyncClient(base_url=replica.base_url, timeout=30, headers=headers) as api:
        etag = (await api.get("/flagd/v1/flags.json")).headers["ETag"]
        poller_started_s = time.monotonic()
        for _ in range(changes):
            await asyncio.sleep(random.uniform(0, POLL_INTERVAL_S))
            token = secrets.token_hex(6)
            started_s = time.monotonic()
            await change(api, token)
            while True:
                cycle_s = (time.monotonic() - poller_started_s) % POLL_INTERVAL_S
                await asyncio.sleep(POLL_INTERVAL_S - cycle_s)
                response = await api.get("/flagd/v1/flags.json", headers={"If-None-Match": etag})
                if response.status_code == 200:
                    etag = response.headers["ETag"]
                    if token in response.text:
                        latencies.append(time.monotonic() - started_s)
                        break
    return latencies


def row(label: str, latencies: list[float]) -> str:
    return f"{label:<44} {statistics.median(latencies) * 1000:>9.1f} {max(latencies) * 1000:>9.1f}"


def admin_headers(database_url: str) -> dict[str, str]:
    """An admin token's Authorization header: changing a flag needs one."""
    engine = make_engine(database_url)
    try:
        _, token = TokenStore(engine).create(f"bench-{secrets.token_hex(4)}", "admin", "bench.propagation")
    finally:
        engine.dispose()
    return {"Authorization": f"Bearer {token}"}


def opt_in(database_url: str, users: int) -> None:
    """Opt users in to the default set, whose ring evaluator then lists them: a larger document."""
    engine = make_engine(database_url)
    try:
        store = CohortStore(engine)
        for number in range(users):
            store.set_opt("default", f"early-{number:06d}", "in", "bench")
    finally:
        engine.dispose()


async def run(database_url: str, changes: int, baseline: bool, opt_ins: int, log_dir: Path) -> None:
    upgrade(database_url)
    opt_in(database_url, opt_ins)
    headers = admin_headers(database_url)
    with replicas(database_url, 2, log_dir) as (first, second):
        async with httpx.AsyncClient(base_url=first.base_url, headers=headers) as api:
            (await api.post("/api/v1/flags", json=FLAG)).raise_for_status()
            size = len((await api.get("/flagd/v1/flags.json")).content)
        print(f"document {size:,} bytes; {changes} changes per row; median and max in ms")
        print(f"{'streams, protocol, where the change was made':<44} {'median':>9} {'max':>9}")
        for kind in ("gRPC", "SSE"):
            for streams in STREAM_COUNTS:
                latencies = await measure(kind, first, first, streams, changes, headers)
                print(row(f"{streams:>5} {kind:<4} same replica", latencies), flush=True)
        for kind in ("gRPC", "SSE"):
            latencies = await measure(kind, second, first, STREAM_COUNTS[-1], changes, headers)
            print(row(f"{STREAM_COUNTS[-1]:>5} {kind:<4} other replica (200 ms poll)", latencies), flush=True)
        if baseline:
            latencies = await poll_baseline(first, max(3, changes // 2), headers)
            print(row(f"    1 flags.json polled every {POLL_INTERVAL_S:g} s (flagd)", latencies), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=10, help="flag changes per row")
    parser.add_argument("--postgres", action="store_true", help="share a PostgreSQL database instead of SQLite")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the 5 s polling row")
    parser.add_argument("--opt-ins", type=int, default=0, help="users opted in first, to make the document larger")
    arguments = parser.parse_args()
    # 1,000 SSE connections need a descriptor each on both sides; the servers inherit the limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    database = postgres_database() if arguments.postgres else sqlite_database()
    with database as url, tempfile.TemporaryDirectory() as log_dir:
        print(f"propagation of a flag change through `ringmaster serve` on {url.split(':')[0]}")
        asyncio.run(run(url, arguments.changes, arguments.baseline, arguments.opt_ins, Path(log_dir)))


if __name__ == "__main__":
    main()
