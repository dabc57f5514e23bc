"""A flag document in a local file (`file:/path/flags.json`, or .yaml), reloaded when the file changes.

A background thread compares the file's modification time, size and inode every `poll_interval_s`
(0.5 s by default): cheap, and it works on every filesystem, containers' bind mounts and
Kubernetes ConfigMap volumes included, which swap the file by renaming a symlink. Writers should
replace the file by rename, so no half-written file is ever read.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from ringmaster_flagd.errors import DocumentError, SourceError
from ringmaster_flagd.source import SourceListener


def is_yaml(path: Path) -> bool:
    return path.suffix.lower() in (".yaml", ".yml")


def read_flag_file(path: Path) -> dict[str, Any]:
    """The document in a JSON or YAML file; OSError when it cannot be read, DocumentError when not a document."""
    text = path.read_text(encoding="utf-8")
    if is_yaml(path):
        import yaml

        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise DocumentError(f"{path} is not valid YAML: {error}") from None
    else:
        try:
            document = json.loads(text)
        except ValueError as error:
            raise DocumentError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise DocumentError(f"{path} does not hold a flag document (an object with 'flags')")
    return document


def _signature(path: Path) -> tuple[int, int, int]:
    status = os.stat(path)
    return status.st_mtime_ns, status.st_size, status.st_ino


class FileWatcher:
    """Reads a flag file now, then again on the watcher thread whenever it changes."""

    def __init__(self, path: Path, listener: SourceListener, poll_interval_s: float = 0.5) -> None:
        if is_yaml(path):
            try:
                import yaml  # noqa: F401
            except ImportError:
                raise SourceError(
                    f"{path}: YAML flag files need PyYAML; pip install 'ringmaster-flagd-provider[yaml]'"
                ) from None
        self.path = path
        self._listener = listener
        self._poll_interval_s = poll_interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: tuple[int, int, int] | None = None

    def read_now(self) -> dict[str, Any]:
        """The current document (for initialisation); raises OSError or DocumentError."""
        self._seen = _signature(self.path)
        return read_flag_file(self.path)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name=f"ringmaster-flags-file:{self.path}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(self._poll_interval_s):
            try:
                signature = _signature(self.path)
                if signature == self._seen:
                    continue
                self._seen = signature
                document = read_flag_file(self.path)
            except OSError as error:
                # Forget the file, so it is read again whenever it comes back.
                self._seen = None
                self._listener.source_lost(f"cannot read {self.path}: {error.strerror or error}")
            except DocumentError as error:
                self._listener.document_unreadable(error)
            else:
                self._listener.document_read(document, None)
