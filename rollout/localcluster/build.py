"""Building the control plane's binaries on first use: scripts/build-kube, shown as a progress bar.

The script compiles kube-apiserver and kube-controller-manager from Debian's source package into
~/.cache/ringmaster. It prints a line every few packages `go build -v` compiles; the bar counts them
against the packages a cold build compiles, and the estimate comes from the rate seen so far. Before
compiling starts (package lists, the source, generated code) the bar says which step it is on.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections import deque
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from rollout.localcluster.cluster import kube_bin_dir
from rollout.localcluster.errors import LocalClusterError

BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build-kube"
ENSURE_PACKAGES = BUILD_SCRIPT.with_name("ensure-debian-packages")
BINARIES = ("kube-apiserver", "kube-controller-manager")
# What `go build -v` names on a cold build (empty Go cache): kube-apiserver first, then what
# kube-controller-manager adds. `go list -deps` counts 1,595 and 266 more; a cold build named between
# 1,400 and 1,500 for kube-apiserver (standard-library internals are not named) and took 3 min 23 s in all
# on 2 cores, the estimate shown at 18 % being within 10 s of that.
COLD_PACKAGES = {"kube-apiserver": 1480, "kube-controller-manager": 270}
# A cold build on 2 cores here took about this long, preparation included (docs/localcluster.md).
COLD_BUILD_MINUTES = "3 to 8"
PROGRESS_EVERY = 10
_COMPILED = re.compile(r"\[build-kube\] (?P<binary>[\w-]+): (?P<count>\d+) packages compiled")
_SAID = re.compile(r"\[build-kube\s+\d+s\] (?P<text>.*)")


def binaries_built(bin_dir: Path | None = None) -> bool:
    folder = bin_dir or kube_bin_dir()
    return all((folder / name).is_file() for name in BINARIES)


def ensure_etcd(console: Console) -> None:
    """Debian's etcd-server and openssl, which the control plane runs and makes its keys with."""
    if shutil.which("etcd") is not None and shutil.which("openssl") is not None:
        return
    console.print("installing Debian's etcd-server and openssl", highlight=False)
    _run_script([str(ENSURE_PACKAGES), "etcd-server", "openssl"], "installing etcd-server")


def build_control_plane(console: Console) -> None:
    """Run scripts/build-kube unless the binaries are built, with a progress bar and an estimate."""
    if binaries_built():
        return
    if not BUILD_SCRIPT.is_file():
        raise LocalClusterError(f"the control plane is not built in {kube_bin_dir()} and {BUILD_SCRIPT} is missing: "
                                "run `ringmaster up` from a clone of the repository, or set RINGMASTER_KUBE_CACHE")
    console.print(f"building kube-apiserver and kube-controller-manager 1.20.2 into {kube_bin_dir().parent} once "
                  f"(about {COLD_BUILD_MINUTES} minutes on 2 cores; later starts take seconds)", highlight=False)
    total = sum(COLD_PACKAGES.values())
    environment = {**os.environ, "BUILD_KUBE_PROGRESS_EVERY": str(PROGRESS_EVERY)}
    recent: deque[str] = deque(maxlen=20)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TimeElapsedColumn(), TextColumn("elapsed, about"), TimeRemainingColumn(), TextColumn("left"))
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("preparing", total=total)
        # stdout is kept apart: the script speaks on stderr and only apt may write to stdout.
        with subprocess.Popen([str(BUILD_SCRIPT)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=environment) as build:
            assert build.stderr is not None
            for line in build.stderr:
                recent.append(line.rstrip())
                compiled = _COMPILED.search(line)
                if compiled:
                    binary = compiled["binary"]
                    done_before = COLD_PACKAGES["kube-apiserver"] if binary == "kube-controller-manager" else 0
                    progress.update(task, description=f"compiling {binary}",
                                    completed=min(total - 1, done_before + int(compiled["count"])))
                    continue
                said = _SAID.search(line)
                if said:
                    progress.update(task, description=said["text"][:60])
            code = build.wait()
        if code != 0:
            tail = "\n  ".join(recent)
            raise LocalClusterError(f"scripts/build-kube failed (exit status {code}); its last lines:\n  {tail}")
        progress.update(task, description="built", completed=total)


def _run_script(command: list[str], doing: str) -> None:
    started = time.monotonic()
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        raise LocalClusterError(f"{doing} failed after {time.monotonic() - started:.0f} s (exit status "
                                f"{finished.returncode}): {finished.stderr.strip()[-800:]}")
