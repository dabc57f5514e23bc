"""The first `ringmaster up` builds the control plane behind a progress bar (rollout/localcluster/build.py).

A stand-in for scripts/build-kube speaks its protocol here; the real script runs in `make test`."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from rollout.localcluster import build
from rollout.localcluster.errors import LocalClusterError

STAND_IN = """#!/usr/bin/env bash
echo "[build-kube    0s] fetching the kubernetes source package" >&2
for n in 10 20 30; do echo "[build-kube] kube-apiserver: $n packages compiled" >&2; done
echo "[build-kube] kube-controller-manager: 10 packages compiled" >&2
{finish}
"""


def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, finish: str) -> Console:
    script = tmp_path / "build-kube"
    script.write_text(STAND_IN.format(finish=finish))
    script.chmod(0o755)
    monkeypatch.setattr(build, "BUILD_SCRIPT", script)
    monkeypatch.setenv("RINGMASTER_KUBE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BIN", str(tmp_path / "cache" / "bin"))
    return Console(file=io.StringIO(), width=120, force_terminal=False)


def test_a_build_that_finishes_fills_the_bar_and_leaves_the_binaries(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    console = stand_in(tmp_path, monkeypatch, 'mkdir -p "$BIN" && touch "$BIN/kube-apiserver" '
                                              '"$BIN/kube-controller-manager"')
    build.build_control_plane(console)
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    assert "about 3 to 8 minutes" in shown
    assert "built" in shown and "100%" in shown
    assert build.binaries_built()


def test_a_failed_build_says_so_with_the_scripts_last_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    console = stand_in(tmp_path, monkeypatch, 'echo "go: no space left on device" >&2; exit 3')
    with pytest.raises(LocalClusterError, match=r"exit status 3(.|\n)*no space left on device"):
        build.build_control_plane(console)
    assert not build.binaries_built()


def test_built_binaries_are_not_built_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    console = stand_in(tmp_path, monkeypatch, "exit 9")
    (tmp_path / "cache" / "bin").mkdir(parents=True)
    for name in build.BINARIES:
        (tmp_path / "cache" / "bin" / name).touch()
    build.build_control_plane(console)
    assert console.file.getvalue() == ""  # type: ignore[attr-defined]
