"""`ringmaster serve --workers N`: several processes serving one HTTP port and one flagd sync port."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from pathlib import Path

import grpc
import httpx
from openfeature.schemas.protobuf.flagd.sync.v1 import sync_pb2, sync_pb2_grpc

from rollout.api.workers import tcp_listener
from tests.polling import eventually
from tests.test_cli import REPOSITORY, RINGMASTER, cli_token, free_port, run, wait_until_serving

FLAG_KEY = "workers-check"
FLAG = {"key": FLAG_KEY, "type": "boolean", "variants": {"on": True, "off": False}, "defaultVariant": "on"}


def worker_pids(parent: int) -> list[int]:
    """The processes uvicorn spawned for its workers: children of `parent` started by multiprocessing's spawn_main."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [int(pid) for pid in children
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def test_two_workers_answer_the_api_and_flagd_sync_and_stop_together(tmp_path: Path) -> None:
    environment = {**os.environ, "RINGMASTER_DATA_DIR": str(tmp_path)}
    environment.pop("RINGMASTER_DATABASE_URL", None)
    run(environment, "db", "upgrade")
    token = cli_token(environment, "ana", "admin")
    port, sync_port = free_port(), free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*RINGMASTER, "serve", "--port", str(port), "--sync-port", str(sync_port), "--workers", "2"],
            env=environment, stdout=log, stderr=subprocess.STDOUT, cwd=REPOSITORY)
    try:
        wait_until_serving(process, port, log_path)
        # Both workers started, the second one too: it could bind the sync port beside the first.
        workers = eventually(lambda: (found if len(found := worker_pids(process.pid)) == 2 else None),
                             what="two worker processes")
        base_url = f"http://127.0.0.1:{port}"
        created = httpx.post(f"{base_url}/api/v1/flags", json=FLAG, headers={"Authorization": f"Bearer {token}"})
        assert created.status_code == 201, created.text

        def every_answer_evaluates_the_flag() -> bool:
            # New connections each time, so both workers are asked; the one that did not make the flag
            # finds it in the shared database within its poll.
            answers = [httpx.post(f"{base_url}/ofrep/v1/evaluate/flags/{FLAG_KEY}",
                                  json={"context": {"targetingKey": f"user-{number}"}}) for number in range(20)]
            return all(answer.status_code == 200 and answer.json()["value"] is True for answer in answers)

        eventually(every_answer_evaluates_the_flag, what="OFREP answers from both workers")
        with grpc.insecure_channel(f"127.0.0.1:{sync_port}") as channel:
            fetched = sync_pb2_grpc.FlagSyncServiceStub(channel).FetchAllFlags(sync_pb2.FetchAllFlagsRequest(),
                                                                               timeout=10)
        assert FLAG_KEY in fetched.flag_configuration
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
    assert code == 0, log_path.read_text()
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "a worker outlived serve"


def test_connections_the_workers_accept_have_nagle_off() -> None:
    # With Nagle's algorithm on, each keep-alive request after the first waits ~40 ms for a delayed ACK.
    listener = tcp_listener("127.0.0.1", 0)

    async def nodelay_of_an_accepted_connection() -> int:
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[int] = loop.create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                accepted.set_result(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP,
                                                                                  socket.TCP_NODELAY))
                transport.close()

        async with await loop.create_server(Probe, sock=listener):
            _, writer = await asyncio.open_connection(*listener.getsockname())
            nodelay = await asyncio.wait_for(accepted, 10)
            writer.close()
        return nodelay

    assert asyncio.run(nodelay_of_an_accepted_connection()) == 1
