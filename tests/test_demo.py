"""`ringmaster demo` (what `make demo` runs) plays its three releases and says so only when they played out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rollout.localcluster.prometheus import free_port
from tests.test_up import processes_under

DEMO_TIMEOUT_S = 900


def test_the_demo_plays_a_good_a_bad_and_a_halted_release_and_stops_everything(tmp_path: Path) -> None:
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith("RINGMASTER_") and key != "KUBECONFIG"}
    finished = subprocess.run([sys.executable, "-m", "rollout", "demo", "--data-dir", str(tmp_path),
                               "--port", str(free_port())], capture_output=True, text=True,
                              env={**environment, "COLUMNS": "200"}, timeout=DEMO_TIMEOUT_S)
    told = finished.stdout + finished.stderr
    assert finished.returncode == 0, told
    for act in ("✔ a good release", "✔ a bad release", "✔ a halted release", "the story played out"):
        assert act in told, told
    assert "gate error-ratio failed in canary" in told
    assert "dashboard is at http://127.0.0.1:" in told
    assert not processes_under(tmp_path), "the demo left processes running"
