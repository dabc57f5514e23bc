"""Where a provider's flags come from: the source string, and what a source reports back.

A source is `file:/path/to/flags.json` (or `.yaml`), read locally and watched, or the base URL of
the Ringmaster service, `http(s)://host:port`, fetched and then followed. Sources run on their
own thread and tell the provider what happened through `SourceListener`; the provider decides
which OpenFeature events that means.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from ringmaster_flagd.errors import DocumentError, SourceError

SOURCE_ENV = "RINGMASTER_FLAGS_SOURCE"
SELECTOR_ENV = "RINGMASTER_FLAGS_SELECTOR"


class SourceListener(Protocol):
    def document_read(self, document: dict[str, Any], etag: str | None) -> None:
        """The source gave a document (possibly the one already loaded)."""

    def document_unreadable(self, error: DocumentError) -> None:
        """The source gave something that is not a flag document."""

    def source_answering(self) -> None:
        """The source answered and has nothing new."""

    def source_lost(self, reason: str) -> None:
        """The source cannot be reached or read."""


@dataclass(frozen=True)
class FileSource:
    path: Path


@dataclass(frozen=True)
class ServiceSource:
    base_url: str
    selector: str | None = None
    """flagd's selector, e.g. 'flagSetId=web': the service then sends only that flag set."""

    @property
    def name(self) -> str:
        return self.base_url if self.selector is None else f"{self.base_url}#{self.selector}"


def parse_source(source: str | None, selector: str | None = None) -> FileSource | ServiceSource:
    """The source (else $RINGMASTER_FLAGS_SOURCE) and selector (else $RINGMASTER_FLAGS_SELECTOR).

    SourceError when the source is missing or unusable, or a selector is given for a file.
    """
    if source is None:
        source = os.environ.get(SOURCE_ENV)
    if selector is None:
        selector = os.environ.get(SELECTOR_ENV) or None
    if not source:
        raise SourceError(
            f"no flag source: pass source='file:/path/to/flags.json' or 'http://host:port', or set ${SOURCE_ENV}"
        )
    if source.startswith("file:"):
        location = source.removeprefix("file:")
        if location.startswith("//"):
            # file:///abs/path (a URL) as well as file:/abs/path and file:relative/path.
            location = unquote(urlsplit(source).path)
        if not location:
            raise SourceError(f"{source!r} names no file; use e.g. 'file:/etc/ringmaster/flags.json'")
        if selector is not None:
            raise SourceError(f"a selector ({selector!r}) picks a flag set from the service; a file is read whole")
        return FileSource(Path(location).expanduser())
    if source.startswith(("http://", "https://")):
        if not urlsplit(source).netloc:
            raise SourceError(f"{source!r} names no host; use e.g. 'http://ringmaster:8080'")
        return ServiceSource(source.rstrip("/"), selector)
    raise SourceError(f"{source!r} is not a flag source; use 'file:/path/to/flags.json' or 'http(s)://host:port'")
