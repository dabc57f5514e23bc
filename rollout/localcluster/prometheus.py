"""A real Prometheus for the local control plane and for tests: installing it, configuring it, filling it
with history, and running it on loopback.

Debian's `prometheus` package (2.42) provides both binaries: `prometheus`, which scrapes the simulated
application through the simulator's file_sd targets file, and `promtool`, which turns OpenMetrics text
into TSDB blocks so a test can query a history it wrote itself. Two habits of that Prometheus shape the
helpers: the first scrape lands about 5 s after start whatever the scrape interval (target discovery
is throttled), so callers poll with `wait_until_up` instead of sleeping; and an instant query without
a time, or more than 5 minutes past the last sample, finds nothing, so `instant_query` always takes one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import yaml

from rollout.localcluster.errors import LocalClusterError

INSTALL_COMMAND = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"]
# Backfilled fixtures carry fixed dates; retention counts from the newest block, but a long one keeps
# them whatever the wall clock says.
RETENTION = "100y"
STOP_GRACE_S = 10.0


def install_prometheus() -> None:
    """Install Debian's prometheus package unless `prometheus` and `promtool` are on PATH already."""
    if _installed():
        return
    if shutil.which("apt-get") is None:
        raise LocalClusterError("prometheus and promtool are not on PATH and there is no apt-get here; "
                                "install Prometheus 2.x and put both binaries on PATH")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Wait for dpkg's lock rather than fail when another test worker installs at the same moment.
    install = [INSTALL_COMMAND[0], "-o", "DPkg::Lock::Timeout=300", *INSTALL_COMMAND[1:]]
    outcome = subprocess.run(install, capture_output=True, text=True, env=environment)
    if outcome.returncode != 0 and not _installed():
        update = subprocess.run(["apt-get", "update", "-qq", "-o", "DPkg::Lock::Timeout=300"],
                                capture_output=True, text=True, env=environment)
        outcome = update if update.returncode != 0 else subprocess.run(
            install, capture_output=True, text=True, env=environment)
    if not _installed():
        raise LocalClusterError(
            "could not install Debian's prometheus package; run "
            f"`{' '.join(INSTALL_COMMAND)}` as root (scripts/ensure-prometheus does). apt-get said:\n"
            + (outcome.stdout + outcome.stderr).strip()[-2000:]
        )


def _installed() -> bool:
    return shutil.which("prometheus") is not None and shutil.which("promtool") is not None


def write_config(path: Path, *, targets_file: Path | None, scrape_interval_s: float = 1.0) -> None:
    """Write a prometheus.yml that scrapes, as job `simulator`, the targets `targets_file` lists (with the
    labels it gives them), or nothing at all when there is no targets file."""
    interval = _duration(scrape_interval_s)
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
    }
    if targets_file is not None:
        config["scrape_configs"] = [{
            "job_name": "simulator",
            "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "1s"}],
        }]
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(yaml.safe_dump(config, sort_keys=False))
    temporary.replace(path)


def _duration(seconds: float) -> str:
    milliseconds = round(seconds * 1000)
    if milliseconds <= 0:
        raise ValueError(f"scrape interval {seconds} s is not positive")
    return f"{milliseconds // 1000}s" if milliseconds % 1000 == 0 else f"{milliseconds}ms"


def prometheus_command(config: Path, data_dir: Path, port: int) -> list[str]:
    """The command line of a Prometheus on 127.0.0.1:`port` keeping its data in `data_dir`."""
    return [
        "prometheus", f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.tsdb.path={data_dir}", f"--storage.tsdb.retention.time={RETENTION}", "--log.level=warn",
    ]


def backfill(openmetrics_text: str, data_dir: Path) -> None:
    """Turn OpenMetrics text (samples with timestamps in seconds) into blocks in `data_dir`, which a
    Prometheus started on it afterwards serves."""
    if not openmetrics_text.rstrip().endswith("# EOF"):
        openmetrics_text = openmetrics_text.rstrip("\n") + "\n# EOF\n"
    elif not openmetrics_text.endswith("\n"):
        openmetrics_text += "\n"
    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ringmaster-backfill-") as folder:
        source = Path(folder) / "history.om"
        source.write_text(openmetrics_text)
        # One block per day instead of one per 2 hours: six times faster on long histories.
        outcome = subprocess.run(
            ["promtool", "tsdb", "create-blocks-from", "openmetrics", "--max-block-duration=24h",
             str(source), str(data_dir)],
            capture_output=True, text=True,
        )
    if outcome.returncode != 0:
        raise LocalClusterError(f"promtool could not backfill {data_dir}:\n{(outcome.stdout + outcome.stderr).strip()}")


def is_ready(url: str) -> bool:
    """Whether the Prometheus at `url` answers /-/ready."""
    try:
        return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def instant_query(url: str, promql: str, *, at_s: float) -> list[dict[str, Any]]:
    """The result of an instant query at `at_s` (Unix seconds): one {"metric", "value"} per series."""
    response = httpx.get(f"{url}/api/v1/query", params={"query": promql, "time": f"{at_s:.3f}"}, timeout=10)
    body: dict[str, Any] = response.json()
    if body.get("status") != "success":
        raise LocalClusterError(f"Prometheus at {url} rejected {promql!r}: {body.get('error', response.text)}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def wait_until_up(url: str, query: str = "up == 1", timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Poll until `query`, evaluated now, returns at least one series, and return them; TimeoutError
    naming the query otherwise."""
    deadline = time.monotonic() + timeout_s
    last_problem = "no series"
    while True:
        try:
            result = instant_query(url, query, at_s=time.time())
            if result:
                return result
            last_problem = "no series"
        except (httpx.HTTPError, ValueError, LocalClusterError) as error:
            last_problem = str(error)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{query!r} at {url} returned no series within {timeout_s} s ({last_problem})")
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        # As the servers themselves bind: a port in TIME_WAIT from the last run is still free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class PrometheusServer:
    """One Prometheus process on loopback, owned by the caller: started, stopped and started again on
    the same data and port. The config and, unless given, the log go beside the data folder."""

    def __init__(self, data_dir: Path, *, port: int | None = None, targets_file: Path | None = None,
                 scrape_interval_s: float = 1.0, log_path: Path | None = None) -> None:
        self.data_dir = data_dir
        self.port = port if port is not None else free_port()
        self.targets_file = targets_file
        self.scrape_interval_s = scrape_interval_s
        self.config_path = data_dir.parent / "prometheus.yml"
        self.log_path = log_path if log_path is not None else data_dir.parent / "prometheus.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 30.0) -> None:
        """Start Prometheus (if it is not running) and wait until it answers /-/ready."""
        if self.running:
            return
        install_prometheus()
        # Else the readiness check below would take whatever answers on the port for this server.
        if not port_is_free(self.port):
            raise LocalClusterError(f"cannot start Prometheus on 127.0.0.1:{self.port}: the port is in use; "
                                    "pass another port, or none to have a free one chosen")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        write_config(self.config_path, targets_file=self.targets_file, scrape_interval_s=self.scrape_interval_s)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(prometheus_command(self.config_path, self.data_dir, self.port),
                                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while not is_ready(self.url):
            if not self.running:
                raise LocalClusterError(f"Prometheus exited while starting; the end of {self.log_path}:\n"
                                        + log_tail(self.log_path))
            if time.monotonic() > deadline:
                self.stop()
                raise LocalClusterError(f"Prometheus was not ready at {self.url} within {timeout_s} s; "
                                        f"the end of {self.log_path}:\n" + log_tail(self.log_path))
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the process: SIGTERM, and SIGKILL if it has not exited after 10 s."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


def log_tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log, for error messages."""
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"
