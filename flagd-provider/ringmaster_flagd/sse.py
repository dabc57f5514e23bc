"""Server-sent events, read from the lines of a `text/event-stream` response (the WHATWG rules).

The Ringmaster service pushes each new flag document as one event (`event: configuration`,
`id: <etag>`, `data: <document>`) and a `: keepalive` comment every 15 s; this turns lines into
events and nothing more.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSentEvent:
    name: str
    data: str
    id: str | None


def read_events(lines: Iterable[str]) -> Iterator[ServerSentEvent]:
    name = ""
    data: list[str] = []
    event_id: str | None = None
    for line in lines:
        if not line:
            if data:
                yield ServerSentEvent(name or "message", "\n".join(data), event_id)
            name, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
        elif field == "id" and "\0" not in value:
            event_id = value
