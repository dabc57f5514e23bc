"""Requests per second `ringmaster serve` answers over OFREP with 1 and 2 uvicorn workers, beside the
same server's own limit: GET /healthz, a route with no work behind it.

`ringmaster serve --workers N` runs as a process of its own (the flagd sync port on, as deployed) on a
SQLite database (`--postgres`: a throwaway PostgreSQL database) holding `--flags` flags that map the
`default` cohort set's rings to variants, so an evaluation runs the cohort set's targeting. The load
comes from wrk (Debian's `wrk`: C, one thread, keep-alive connections, a Lua script that gives every
request a targetingKey of its own), in a process of its own, for `--seconds` after a 2 s warm-up, on:

* GET /healthz: the baseline, the HTTP stack (uvicorn, FastAPI, the service's middleware) and nothing else
  (a plain `def` route, so FastAPI runs it on its thread pool; the OFREP routes are `async`);
* POST /ofrep/v1/evaluate/flags/{key}: one flag;
* POST /ofrep/v1/evaluate/flags: every flag at once (bulk).

Reported for each: requests per second, latency p50 / p99 as wrk measures it (every connection sends
its next request when the answer arrives, so with many connections it is latency at saturation, not at
a chosen rate; with 1 connection it is one request alone), answers other than 200, and the CPU each part
used during the run, in cores: the server's processes, wrk, and everything else on the machine (the
machine is shared), so the figure can be read against what was free.
With several workers, which worker takes a new connection is whichever accepts it first, so the
connections (and the work) may be split unevenly: the last column says how the CPU was split, and
`--repeats` measures each group of rows again on new connections.
Run: `python -m bench.ofrep [--workers 1,2] [--connections 1,32] [--seconds 10] [--flags 10] [--repeats 1]
[--postgres]`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.controller import cpu_s, machine_busy_s
from bench.propagation import admin_headers, replicas
from bench.usage_ingest import postgres_database, sqlite_database
from cohorts.db import upgrade

WARM_UP_S = 2.0
FLAG_PREFIX = "bench-ofrep"
RESULT_MARK = "RESULT "
# A Lua script for wrk: the method, path and body of every request, and the figures as one JSON line.
WRK_SCRIPT = """
local counter = 0
local method, path, with_body = "%(method)s", "%(path)s", %(with_body)s
request = function()
  counter = counter + 1
  if not with_body then
    return wrk.format(method, path)
  end
  local body = '{"context":{"targetingKey":"user-' .. counter .. '","plan":"pro","country":"de"}}'
  return wrk.format(method, path, {["Content-Type"] = "application/json"}, body)
end
done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '%(mark)s{"requests":%%d,"duration_us":%%d,"p50_us":%%d,"p99_us":%%d,"non_2xx":%%d,"socket_errors":%%d}\\n',
    summary.requests, summary.duration, latency:percentile(50.0), latency:percentile(99.0), errors.status,
    errors.connect + errors.read + errors.write + errors.timeout))
end
"""


@dataclass(frozen=True)
class Route:
    title: str
    method: str
    path: str

    @property
    def with_body(self) -> bool:
        return self.method == "POST"


def routes(flag_count: int) -> list[Route]:
    return [
        Route("GET /healthz (baseline)", "GET", "/healthz"),
        Route("POST /ofrep/v1/evaluate/flags/{key}", "POST", f"/ofrep/v1/evaluate/flags/{FLAG_PREFIX}-00"),
        Route(f"POST /ofrep/v1/evaluate/flags ({flag_count} flags)", "POST", "/ofrep/v1/evaluate/flags"),
    ]


@dataclass(frozen=True)
class Result:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    server_cores: float
    # Each worker process's share (cores): the connections are spread by which worker accepts them first.
    worker_cores: tuple[float, ...]
    wrk_cores: float
    other_cores: float

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else math.nan


def flag_body(number: int) -> dict[str, object]:
    return {
        "key": f"{FLAG_PREFIX}-{number:02d}", "type": "boolean", "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "targeting": {"rings": {"cohortSet": "default", "variants": {"canary": "on", "early-adopter": "on"},
                                "otherwise": "off"}},
    }


def server_processes(pid: int) -> list[int]:
    """`ringmaster serve` and the worker processes it started."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *(int(child) for child in children)]


def processes_cpu_s(pids: list[int]) -> float:
    return sum(cpu_s(Path(f"/proc/{pid}/stat")) for pid in pids)


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(base_url: str, route: Route, connections: int, seconds: float, folder: Path) -> dict[str, float]:
    script = folder / f"{route.method.lower()}-{route.path.strip('/').replace('/', '-')}.lua"
    script.write_text(WRK_SCRIPT % {"method": route.method, "path": route.path,
                                    "with_body": "true" if route.with_body else "false", "mark": RESULT_MARK})
    completed = subprocess.run(
        ["wrk", "--threads", "1", "--connections", str(connections), "--duration", f"{seconds:g}s",
         "--timeout", "10s", "--script", str(script), base_url],
        capture_output=True, text=True, timeout=seconds + 60)
    if completed.returncode != 0:
        raise SystemExit(f"wrk failed ({completed.returncode}): {completed.stderr.strip()}")
    line = next((line for line in completed.stdout.splitlines() if line.startswith(RESULT_MARK)), None)
    if line is None:
        raise SystemExit(f"wrk printed no result:\n{completed.stdout}")
    figures: dict[str, float] = json.loads(line[len(RESULT_MARK):])
    return figures


def measure(base_url: str, server_pid: int, route: Route, connections: int, seconds: float, folder: Path) -> Result:
    run_wrk(base_url, route, connections, WARM_UP_S, folder)
    pids = server_processes(server_pid)
    workers_before_s = [processes_cpu_s([pid]) for pid in pids[1:]]
    server_before_s, wrk_before_s, machine_before_s = processes_cpu_s(pids), children_cpu_s(), machine_busy_s()
    started_s = time.monotonic()
    figures = run_wrk(base_url, route, connections, seconds, folder)
    wall_s = time.monotonic() - started_s
    server_s = processes_cpu_s(pids) - server_before_s
    workers_s = [processes_cpu_s([pid]) - before_s for pid, before_s in zip(pids[1:], workers_before_s, strict=True)]
    wrk_s = children_cpu_s() - wrk_before_s
    others_s = max(0.0, machine_busy_s() - machine_before_s - server_s - wrk_s)
    return Result(
        requests=int(figures["requests"]), seconds=figures["duration_us"] / 1e6, p50_ms=figures["p50_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000, non_2xx=int(figures["non_2xx"]), socket_errors=int(figures["socket_errors"]),
        server_cores=server_s / wall_s, wrk_cores=wrk_s / wall_s, other_cores=others_s / wall_s,
        # The supervisor's other child, multiprocessing's resource tracker, uses next to nothing.
        worker_cores=tuple(worker_s / wall_s for worker_s in workers_s if worker_s / wall_s >= 0.005),
    )


def create_flags(base_url: str, headers: dict[str, str], count: int) -> int:
    """The flags, once; the size of the bulk answer."""
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as api:
        for number in range(count):
            response = api.post("/api/v1/flags", json=flag_body(number))
            if response.status_code not in (201, 409):
                raise SystemExit(f"creating flag {number} failed: {response.status_code} {response.text}")
        # The other workers find the flags within their 200 ms poll of the database.
        time.sleep(1.0)
        bulk = api.post("/ofrep/v1/evaluate/flags", json={"context": {"targetingKey": "user-1"}})
        bulk.raise_for_status()
        if len(bulk.json()["flags"]) != count:
            raise SystemExit(f"the bulk evaluation answered {len(bulk.json()['flags'])} flags, not {count}")
        return len(bulk.content)


HEADER = (f"{'workers':>7}  {'route':<44} {'conns':>5} {'req/s':>8} {'% of baseline':>13} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'not 200':>7}   {'cores: server':>13} {'wrk':>5} {'others':>6}   by worker")


def row(workers: int, route: Route, connections: int, result: Result, baseline: Result | None) -> str:
    share = "" if baseline is None else f"{result.per_second / baseline.per_second * 100:.0f} %"
    return (f"{workers:>7}  {route.title:<44} {connections:>5} {result.per_second:>8,.0f} {share:>13} "
            f"{result.p50_ms:>7.2f} {result.p99_ms:>7.2f} {result.non_2xx + result.socket_errors:>7}   "
            f"{result.server_cores:>13.2f} {result.wrk_cores:>5.2f} {result.other_cores:>6.2f}"
            + (f"   {' + '.join(f'{cores:.2f}' for cores in result.worker_cores)}" if len(result.worker_cores) > 1
               else ""))


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2", help="comma-separated uvicorn worker counts")
    parser.add_argument("--connections", default="1,32", help="comma-separated counts of wrk's connections")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of load per row")
    parser.add_argument("--flags", type=int, default=10, help="flags in the database (the bulk answer holds all)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="times each group of rows is measured (each time on new connections)")
    parser.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL database instead of SQLite")
    arguments = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: scripts/ensure-debian-packages wrk")
    worker_counts = [int(count) for count in arguments.workers.split(",")]
    connection_counts = [int(count) for count in arguments.connections.split(",")]
    backend = "PostgreSQL" if arguments.postgres else "SQLite"
    print(f"OFREP on `ringmaster serve`: {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.system()} {platform.release()}; {backend}; wrk 1 thread; {arguments.seconds:g} s a row after "
          f"{WARM_UP_S:g} s of warm-up; load average {load_average()}", flush=True)
    database = postgres_database() if arguments.postgres else sqlite_database()
    with database as database_url, tempfile.TemporaryDirectory(prefix="ringmaster-bench-ofrep-") as folder_name:
        folder = Path(folder_name)
        upgrade(database_url)
        headers = admin_headers(database_url)
        print(HEADER, flush=True)
        for workers in worker_counts:
            with replicas(database_url, 1, folder, ["--workers", str(workers)]) as (server,):
                bulk_bytes = create_flags(server.base_url, headers, arguments.flags)
                for connections in connection_counts:
                    for _ in range(arguments.repeats):
                        baseline: Result | None = None
                        for route in routes(arguments.flags):
                            result = measure(server.base_url, server.process.pid, route, connections,
                                             arguments.seconds, folder)
                            print(row(workers, route, connections, result, baseline), flush=True)
                            baseline = baseline or result
        print(f"bulk answer {bulk_bytes:,} bytes; load average {load_average()}")
    print("cores: CPU seconds per second of the run, of the server's processes (and of each worker), of wrk, and of "
          "every other process on the machine; p50 and p99 are wrk's per-request latencies.")


if __name__ == "__main__":
    main()
