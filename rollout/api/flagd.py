"""The flag document over HTTP, for flagd and in-process providers: a pollable file and a change stream.

`GET /flagd/v1/flags.json` is what flagd's HTTP sync source polls (`flagd start --uri
http://host:8080/flagd/v1/flags.json`): the whole document with its content-hash ETag, 304 when
`If-None-Match` still matches. `GET /flagd/v1/stream` pushes the same document as server-sent
events: the current document on connect, then one event per change, each
`event: configuration`, `id: <ETag>`, `data: <the document on one line>` and a blank line, with a
`: keepalive` comment every 15 s so proxies keep the connection open. Both honour flagd's
`Flagd-Selector: flagSetId=<set>` header.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import StreamingResponse

from rollout.api.problems import problem, problems
from rollout.flags.document import Selector, parse_selector
from rollout.flags.publisher import FlagPublisher, Published, PublisherStopped

router = APIRouter(prefix="/flagd/v1", tags=["flagd"])

KEEPALIVE_S = 15.0
SelectorHeader = Annotated[
    str | None,
    Header(alias="Flagd-Selector", description="flagd selector: 'flagSetId=<set>' serves only that flag set"),
]


def _publisher(request: Request) -> FlagPublisher:
    publisher: FlagPublisher = request.app.state.publisher
    return publisher


def _not_ready(publisher: FlagPublisher) -> Response:
    return problem(503, "not-ready", "No flag document yet",
                   f"the flag document could not be compiled: {publisher.last_error or 'not compiled yet'}; "
                   "see /readyz and the service log")


def _matches(if_none_match: str | None, etag: str) -> bool:
    if if_none_match is None:
        return False
    candidates = [candidate.strip().removeprefix("W/") for candidate in if_none_match.split(",")]
    return "*" in candidates or etag in candidates


BAD_SELECTOR = problems(400, s400="a Flagd-Selector other than flagSetId=<set>")


@router.get("/flags.json", responses={200: {"description": "the flagd flag-definition document"},
                                      304: {"description": "unchanged since If-None-Match"},
                                      **BAD_SELECTOR,
                                      **problems(503, s503="no document could be compiled yet")})
def flags_json(
    request: Request,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
    selector: SelectorHeader = None,
) -> Response:
    """Every flag and the cohort evaluators they use, as one flagd document."""
    publisher = _publisher(request)
    chosen = parse_selector(selector)
    published = publisher.current
    if published is None:
        return _not_ready(publisher)
    rendering = published.render(chosen)
    headers = {"ETag": rendering.quoted_etag, "Cache-Control": "no-cache"}
    if _matches(if_none_match, rendering.quoted_etag):
        return Response(status_code=304, headers=headers)
    return Response(rendering.text, media_type="application/json", headers=headers)


@router.get("/stream", response_class=StreamingResponse,
            responses={200: {"description": "server-sent events, one `configuration` event per document",
                             "content": {"text/event-stream": {}}}, **BAD_SELECTOR})
async def stream(request: Request, selector: SelectorHeader = None) -> StreamingResponse:
    """The current document, then each changed one, as server-sent events."""
    chosen = parse_selector(selector)
    return StreamingResponse(
        _events(_publisher(request), chosen),
        media_type="text/event-stream",
        # no-transform and X-Accel-Buffering keep proxies from holding events back.
        headers={"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"},
    )


async def _events(publisher: FlagPublisher, selector: Selector) -> AsyncIterator[str]:
    sent: str | None = None
    async with publisher.subscribe() as documents:
        while True:
            try:
                published: Published = await asyncio.wait_for(documents.next(), KEEPALIVE_S)
            except TimeoutError:
                yield ": keepalive\n\n"
                continue
            except PublisherStopped:
                return
            rendering = published.render(selector)
            if rendering.etag == sent:
                continue  # the change was outside the selected flag set
            sent = rendering.etag
            yield f"event: configuration\nid: {rendering.quoted_etag}\ndata: {rendering.text}\n\n"
