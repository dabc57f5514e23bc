"""The last good flag document of a source, kept on disk so an app can start while its source is down.

One file per source under $RINGMASTER_FLAGS_CACHE_DIR (default ~/.cache/ringmaster/flags/), named
after the source, holding the document and the ETag it was served with. It is written by atomic
rename, so a crash leaves the previous copy or the new one, never half of either.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

CACHE_DIR_ENV = "RINGMASTER_FLAGS_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/ringmaster/flags")

logger = logging.getLogger("ringmaster_flagd.disk_cache")


@dataclass(frozen=True)
class CachedDocument:
    document: dict[str, Any]
    etag: str | None


class DocumentCache:
    def __init__(self, source: str, directory: str | Path | None = None) -> None:
        if directory is None:
            directory = os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR
        readable = re.sub(r"[^A-Za-z0-9.-]+", "_", source).strip("_")[:80]
        digest = hashlib.sha256(source.encode()).hexdigest()[:12]
        self.source = source
        self.path = Path(directory).expanduser() / f"{readable}-{digest}.json"

    def load(self) -> CachedDocument | None:
        """The saved document, or None when there is none or it cannot be read."""
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
            document, etag = saved["document"], saved.get("etag")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning("ignoring the unreadable flag cache %s: %s", self.path, error)
            return None
        if not isinstance(document, dict) or not (etag is None or isinstance(etag, str)):
            logger.warning("ignoring the flag cache %s: it does not hold a document", self.path)
            return None
        return CachedDocument(document, etag)

    def save(self, document: dict[str, Any], etag: str | None) -> None:
        """Keep a document; failing to (a read-only home, a full disk) costs only the fallback."""
        saved = {"source": self.source, "etag": etag, "savedAt": datetime.now(UTC).isoformat(), "document": document}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(
                "w", encoding="utf-8", dir=self.path.parent, prefix=f".{self.path.name}.", delete=False
            ) as handle:
                json.dump(saved, handle)
            os.replace(handle.name, self.path)
        except OSError as error:
            logger.warning("could not keep the flag document in %s: %s", self.path, error)
