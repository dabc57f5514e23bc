"""The `ringmaster` command against a real `ringmaster serve` process over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import httpx
import pytest
from openfeature.schemas.protobuf.flagd.sync.v1 import sync_pb2, sync_pb2_grpc

REPOSITORY = Path(__file__).resolve().parent.parent
RINGMASTER = [sys.executable, "-m", "rollout"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def run(environment: dict[str, str], *arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run([*RINGMASTER, *arguments], env=environment, capture_output=True, text=True,
                               timeout=60, cwd=REPOSITORY)
    if check and completed.returncode != 0:
        raise AssertionError(f"ringmaster {' '.join(arguments)} failed:\n{completed.stdout}\n{completed.stderr}")
    return completed


def cli_token(environment: dict[str, str], name: str, role: str) -> str:
    """A token made with `ringmaster token create` in the environment's database: its output's last line."""
    return run(environment, "token", "create", "--name", name, "--role", role).stdout.splitlines()[-1]


def wait_until_serving(process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    """Until `ringmaster serve` answers /readyz; fails with its log if it exits, or after 30 s."""
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert process.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, "ringmaster serve did not become ready in 30 s"
        time.sleep(0.1)


def cli_environment(data_dir: Path, port: int, *, kubeconfig: Path | None = None,
                    token_role: str | None = "admin") -> dict[str, str]:
    """What a test runs `ringmaster` with: a migrated SQLite database of its own in `data_dir`, the server at
    `port`, the cluster's kubeconfig if given, and a token of `token_role` made for ana (None: no token)."""
    environment = {**os.environ, "RINGMASTER_DATA_DIR": str(data_dir), "COLUMNS": "200",
                   "RINGMASTER_SERVER": f"http://127.0.0.1:{port}"}
    for name in ("RINGMASTER_DATABASE_URL", "RINGMASTER_TOKEN", "RINGMASTER_READS_REQUIRE_TOKEN"):
        environment.pop(name, None)
    if kubeconfig is not None:
        environment["RINGMASTER_KUBECONFIG"] = str(kubeconfig)
    run(environment, "db", "upgrade")
    if token_role is not None:
        environment["RINGMASTER_TOKEN"] = cli_token(environment, "ana", token_role)
    return environment


@contextmanager
def serving(environment: dict[str, str], port: int, log_path: Path,
            sync_port: int = 0) -> Iterator[subprocess.Popen[bytes]]:
    """`ringmaster serve` on `port` in `environment` until the block ends; its output goes to `log_path`."""
    with log_path.open("w") as log:
        process = subprocess.Popen([*RINGMASTER, "serve", "--port", str(port), "--sync-port", str(sync_port)],
                                   env=environment, stdout=log, stderr=subprocess.STDOUT, cwd=REPOSITORY)
        try:
            wait_until_serving(process, port, log_path)
            yield process
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A migrated SQLite database and `ringmaster serve` on a free port; yields the CLI's environment."""
    data_dir = tmp_path_factory.mktemp("ringmaster-data")
    port, sync_port = free_port(), free_port()
    environment = cli_environment(data_dir, port)
    with serving(environment, port, data_dir / "serve.log", sync_port) as process:
        environment["SERVE_PID"] = str(process.pid)
        environment["SYNC_PORT"] = str(sync_port)
        yield environment


def test_explain_prints_the_ring_and_the_rule(server: dict[str, str]) -> None:
    output = run(server, "cohort", "explain", "ana", "--attr", "team=staff").stdout
    assert output.strip() == "ana → canary  (rule 'staff' matched)"


def test_typed_attributes_and_json_output(server: dict[str, str]) -> None:
    run(server, "cohort", "apply", "-f", str(REPOSITORY / "examples" / "cohort-sets" / "web.json"))
    explained = json.loads(run(server, "cohort", "explain", "oscar", "--set", "web",
                               "--attr", "appVersion=1.9.4", "--json").stdout)
    assert (explained["ring"], explained["rule"]) == ("laggard", "old-apps")
    typed = json.loads(run(server, "cohort", "explain", "ivy", "--set", "web",
                           "--attr", "appVersion:=1.5", "--json").stdout)
    assert typed["rule"] == "old-apps"  # the number 1.5 reads as version 1.5.0


def test_apply_twice_makes_a_second_version(server: dict[str, str]) -> None:
    spec = json.loads((REPOSITORY / "examples" / "cohort-sets" / "web.json").read_text())
    spec["name"] = "web-twice"
    path = Path(server["RINGMASTER_DATA_DIR"]) / "web-twice.json"
    path.write_text(json.dumps(spec))
    assert "version 1" in run(server, "cohort", "apply", "-f", str(path)).stdout
    assert "version 2" in run(server, "cohort", "apply", "-f", str(path), "--comment", "again").stdout
    assert json.loads(run(server, "cohort", "get", "web-twice").stdout)["comment"] == "again"


def test_opt_in_then_explain_and_audit(server: dict[str, str]) -> None:
    run(server, "cohort", "opt-in", "olga")
    assert "opt-in" in run(server, "cohort", "explain", "olga").stdout
    audit = json.loads(run(server, "cohort", "audit", "--subject", "cohort-set/default", "--json").stdout)
    assert (audit[0]["action"], audit[0]["actor"]) == ("cohort-set.set-opt", "ana")  # the token's name


def test_usage_ingest_reads_json_lines(server: dict[str, str]) -> None:
    path = Path(server["RINGMASTER_DATA_DIR"]) / "usage.jsonl"
    path.write_text("\n".join(json.dumps({"targetingKey": f"u{number}", "metrics": {"active_days_30d": number}})
                              for number in range(30)) + "\n")
    assert "30 users" in run(server, "usage", "ingest", str(path)).stdout
    estimate = json.loads(run(server, "cohort", "estimate", "--json").stdout)
    assert estimate["source"] == "usage" and estimate["population"] >= 30


def test_a_refused_spec_prints_each_field_and_exits_1(server: dict[str, str]) -> None:
    path = Path(server["RINGMASTER_DATA_DIR"]) / "bad.json"
    path.write_text(json.dumps({"name": "bad", "rings": ["a", "b"], "defaultRing": "c"}))
    completed = run(server, "cohort", "apply", "-f", str(path), check=False)
    assert completed.returncode == 1
    assert "defaultRing: 'c' is not one of the rings" in completed.stderr


def test_bad_attribute_syntax_is_explained(server: dict[str, str]) -> None:
    completed = run(server, "cohort", "explain", "k", "--attr", "seats:=forty", check=False)
    assert completed.returncode == 1 and "is not JSON" in completed.stderr


def test_an_unreachable_server_says_how_to_reach_one(server: dict[str, str]) -> None:
    elsewhere = {**server, "RINGMASTER_SERVER": f"http://127.0.0.1:{free_port()}"}
    completed = run(elsewhere, "cohort", "list", check=False)
    assert completed.returncode == 1 and "start it with `ringmaster serve`" in completed.stderr


def test_flag_set_creates_a_ring_flag_from_options_and_promotes_one_ring_at_a_time(server: dict[str, str]) -> None:
    created = run(server, "flag", "set", "new-checkout", "--type", "boolean", "--variant", "on=true",
                  "--variant", "off=false", "--default", "off", "--rings", "default", "--ring", "canary=on",
                  "--otherwise", "off", "--flag-set", "web", "--meta", "owner=payments", "--meta", "tier:=1").stdout
    assert created.strip() == "flag new-checkout is at version 1"
    promoted = run(server, "flag", "set", "new-checkout", "--ring", "early-adopter=on", "--comment", "canary is fine")
    assert promoted.stdout.strip() == "flag new-checkout is at version 2"
    flag = json.loads(run(server, "flag", "get", "new-checkout").stdout)
    assert flag["spec"]["targeting"] == {"rings": {"cohortSet": "default", "otherwise": "off",
                                                   "variants": {"canary": "on", "early-adopter": "on"}}}
    assert (flag["spec"]["metadata"], flag["comment"]) == ({"owner": "payments", "tier": 1}, "canary is fine")
    assert json.loads(run(server, "flag", "get", "new-checkout", "--version", "1").stdout)["version"] == 1
    listed = run(server, "flag", "list").stdout
    assert "new-checkout" in listed and "default: canary,early-adopter→on; else→off" in listed


def test_flag_set_from_a_file_and_a_refused_flag_names_each_field(server: dict[str, str]) -> None:
    path = Path(server["RINGMASTER_DATA_DIR"]) / "theme.json"
    path.write_text(json.dumps({"key": "theme", "type": "string", "variants": {"dark": "dark", "light": "light"},
                                "defaultVariant": "light"}))
    assert run(server, "flag", "set", "-f", str(path)).stdout.strip() == "flag theme is at version 1"
    assert json.loads(run(server, "flag", "list", "--json").stdout)[-1]["key"] == "theme"
    path.write_text(json.dumps({"key": "theme", "type": "string", "variants": {"dark": 1}, "defaultVariant": "dim"}))
    refused = run(server, "flag", "set", "-f", str(path), check=False)
    assert refused.returncode == 1
    assert "variants.dark:" in refused.stderr and "defaultVariant: 'dim' is not one of the variants" in refused.stderr
    bad_value = run(server, "flag", "set", "lights", "--type", "boolean", "--variant", "on=yes", check=False)
    assert bad_value.returncode == 1 and "'yes' is not a boolean value" in bad_value.stderr


def test_flag_disable_reaches_the_sync_port_serve_listens_on(server: dict[str, str]) -> None:
    run(server, "flag", "set", "kill-switch", "--type", "boolean", "--variant", "on=true", "--default", "on")
    assert "flag kill-switch is disabled (version 2)" in run(server, "flag", "disable", "kill-switch").stdout
    with grpc.insecure_channel(f"127.0.0.1:{server['SYNC_PORT']}") as channel:
        fetched = sync_pb2_grpc.FlagSyncServiceStub(channel).FetchAllFlags(sync_pb2.FetchAllFlagsRequest())
    assert json.loads(fetched.flag_configuration)["flags"]["kill-switch"]["state"] == "DISABLED"
    assert "is enabled (version 3)" in run(server, "flag", "enable", "kill-switch").stdout


def test_serve_stops_cleanly_on_sigterm(server: dict[str, str]) -> None:
    """Runs last in this module: it stops the shared server."""
    os.kill(int(server["SERVE_PID"]), signal.SIGTERM)
    deadline = time.monotonic() + 15
    log = Path(server["RINGMASTER_DATA_DIR"]) / "serve.log"
    while "Finished server process" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    assert "Application shutdown complete" in log.read_text()
