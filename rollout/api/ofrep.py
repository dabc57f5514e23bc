"""OFREP, the OpenFeature Remote Evaluation Protocol: flags evaluated here for providers that ask over HTTP.

`POST /ofrep/v1/evaluate/flags/{key}` evaluates one flag, `POST /ofrep/v1/evaluate/flags` every
flag (with an ETag over the answer, and 304 when `If-None-Match` still matches), both for the
evaluation context in the body, `{"context": {"targetingKey": "user-1", ...}}`. Bodies and errors
are OFREP's, not problem documents, because OFREP providers read `errorCode`:
400 `INVALID_CONTEXT` (no JSON object, no context object, a targetingKey that is not a string),
400 `TARGETING_KEY_MISSING` (OFREP 0.3.0 requires one), 400 `PARSE_ERROR` or `GENERAL` (the flag's
targeting failed), 404 `FLAG_NOT_FOUND`. A flag with no value to give (disabled, or no default
variant) answers without `value` and `variant`, as OFREP's code-default form says.

Evaluation uses the provider's own evaluator (`ringmaster_flagd.evaluator`) over the document the
publisher keeps, so OFREP answers exactly what an in-process provider answers.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ringmaster_flagd.errors import DocumentError
from ringmaster_flagd.evaluator import Evaluator, Resolution

from rollout.flags.document import EVERY_FLAG, Selector, parse_selector
from rollout.flags.errors import InvalidSelector
from rollout.flags.publisher import FlagPublisher, Published

router = APIRouter(prefix="/ofrep/v1", tags=["ofrep"])

MAX_BODY_BYTES = 1 << 20
logger = logging.getLogger(__name__)

SelectorHeader = Annotated[
    str | None, Header(alias="Flagd-Selector", description="'flagSetId=<set>' evaluates only that flag set's flags")
]
IfNoneMatchHeader = Annotated[str | None, Header(alias="If-None-Match")]
EXAMPLE_BODY = '{"context": {"targetingKey": "user-1"}}'


class OfrepError(BaseModel):
    """OFREP's error answer (not a problem document: OFREP providers read `errorCode`)."""

    model_config = ConfigDict(populate_by_name=True)

    key: str | None = Field(default=None, description="the flag, in a single evaluation's answer")
    error_code: str = Field(alias="errorCode", description="INVALID_CONTEXT, TARGETING_KEY_MISSING, PARSE_ERROR, "
                                                           "GENERAL or FLAG_NOT_FOUND")
    error_details: str = Field(alias="errorDetails")
    metadata: dict[str, Any] | None = Field(default=None, description="the flag's metadata, when it exists")


class OfrepUnavailable(BaseModel):
    """OFREP's general error: no flag document has been compiled yet."""

    model_config = ConfigDict(populate_by_name=True)

    error_details: str = Field(alias="errorDetails")


# The body is read by hand (OFREP answers a bad one in its own form), so its schema is declared here.
CONTEXT_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["context"],
    "properties": {"context": {"type": "object", "required": ["targetingKey"], "description": "the evaluation context",
                               "properties": {"targetingKey": {"type": "string", "minLength": 1}}}},
}}}}}
NO_DOCUMENT: dict[int | str, dict[str, Any]] = {
    500: {"model": OfrepUnavailable, "description": "no flag document has been compiled yet"}}


class Refusal(Exception):
    """A request OFREP answers with 400 and an error code."""

    def __init__(self, error_code: str, details: str) -> None:
        self.error_code = error_code
        self.details = details
        super().__init__(details)


class OfrepEvaluator:
    """An evaluator loaded with the publisher's current document, replaced whole at each publication."""

    def __init__(self, publisher: FlagPublisher) -> None:
        self._publisher = publisher
        self._loaded: tuple[Published, Evaluator] | None = None
        publisher.add_listener(self._load)
        if publisher.current is not None:
            self._load(publisher.current)

    @property
    def loaded(self) -> tuple[Published, Evaluator] | None:
        """The document and the evaluator holding it, read together so they always agree."""
        return self._loaded

    def _load(self, published: Published) -> None:
        evaluator = Evaluator()
        try:
            evaluator.set_document(published.document)
        except DocumentError:  # cannot happen for a document Ringmaster compiled; keep the last one if it does
            logger.exception("OFREP cannot load flag document %s; still evaluating the last one",
                             published.rendering.etag)
            return
        self._loaded = (published, evaluator)


def _ofrep_evaluator(request: Request) -> OfrepEvaluator:
    evaluator: OfrepEvaluator = request.app.state.ofrep
    return evaluator


async def _context(request: Request) -> tuple[dict[str, Any], str]:
    """The body's context attributes (without the targeting key) and its targeting key."""
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise Refusal("INVALID_CONTEXT", f"the body is {len(body):,} bytes; the most is {MAX_BODY_BYTES:,}")
    try:
        parsed = json.loads(body) if body.strip() else None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise Refusal("INVALID_CONTEXT", f"the body is not JSON ({error}); send e.g. {EXAMPLE_BODY}") from error
    if not isinstance(parsed, dict) or not isinstance(parsed.get("context"), dict):
        raise Refusal("INVALID_CONTEXT", f"the body must hold a context object, e.g. {EXAMPLE_BODY}")
    context: dict[str, Any] = dict(parsed["context"])
    targeting_key = context.pop("targetingKey", None)
    if targeting_key is None or targeting_key == "":
        raise Refusal("TARGETING_KEY_MISSING", f"context.targetingKey is required, e.g. {EXAMPLE_BODY}")
    if not isinstance(targeting_key, str):
        raise Refusal("INVALID_CONTEXT", f"context.targetingKey must be a string, not {targeting_key!r}")
    return context, targeting_key


def _selector(text: str | None) -> Selector:
    try:
        return parse_selector(text)
    except InvalidSelector as error:
        raise Refusal("GENERAL", str(error)) from error


def _in_selection(published: Published, key: str, selector: Selector) -> bool:
    if selector == EVERY_FLAG:
        return key in published.document["flags"]
    definition = published.document["flags"].get(key)
    return definition is not None and definition.get("metadata", {}).get("flagSetId", "") == selector.flag_set_id


def _success(key: str, resolution: Resolution) -> dict[str, Any]:
    body: dict[str, Any] = {"key": key, "reason": resolution.reason}
    if resolution.variant is not None:
        body["variant"] = resolution.variant
        body["value"] = resolution.value
    body["metadata"] = dict(resolution.flag_metadata)
    return body


def _failure(key: str, resolution: Resolution) -> dict[str, Any]:
    return {"key": key, "errorCode": resolution.error_code, "errorDetails": resolution.error_message or "",
            "metadata": dict(resolution.flag_metadata)}


def _evaluate(evaluator: Evaluator, key: str, context: Mapping[str, Any], targeting_key: str) -> Resolution:
    # No type: OFREP requests carry none (ADR-0003), so the flag's own value type is answered.
    return evaluator.resolve(key, None, None, context, targeting_key)


def _unavailable(publisher_error: str | None) -> JSONResponse:
    return JSONResponse({"errorDetails": f"no flag document yet: {publisher_error or 'not compiled yet'}"},
                        status_code=500)


@router.post("/evaluate/flags/{key}", responses={400: {"model": OfrepError,
                                                      "description": "invalid context, or the flag failed"},
                                                 404: {"model": OfrepError, "description": "no such flag"},
                                                 **NO_DOCUMENT}, openapi_extra=CONTEXT_BODY)
async def evaluate_flag(request: Request, key: str, selector: SelectorHeader = None) -> JSONResponse:
    """Evaluate one flag for the context in the body."""
    ofrep = _ofrep_evaluator(request)
    try:
        chosen = _selector(selector)
        context, targeting_key = await _context(request)
    except Refusal as refusal:
        return JSONResponse({"key": key, "errorCode": refusal.error_code, "errorDetails": refusal.details},
                            status_code=400)
    loaded = ofrep.loaded
    if loaded is None:
        return _unavailable(request.app.state.publisher.last_error)
    published, evaluator = loaded
    if not _in_selection(published, key, chosen):
        return JSONResponse({"key": key, "errorCode": "FLAG_NOT_FOUND",
                             "errorDetails": f"flag {key!r} does not exist{_within(chosen)}"}, status_code=404)
    resolution = _evaluate(evaluator, key, context, targeting_key)
    if resolution.error_code is not None:
        return JSONResponse(_failure(key, resolution), status_code=400)
    return JSONResponse(_success(key, resolution))


def _within(selector: Selector) -> str:
    if selector.flag_set_id is None:
        return ""
    return f" in flag set {selector.flag_set_id!r}" if selector.flag_set_id else " outside every flag set"


@router.post("/evaluate/flags", responses={304: {"description": "the answer is unchanged since If-None-Match"},
                                           400: {"model": OfrepError, "description": "invalid context"},
                                           **NO_DOCUMENT}, openapi_extra=CONTEXT_BODY)
async def evaluate_flags(request: Request, if_none_match: IfNoneMatchHeader = None,
                         selector: SelectorHeader = None) -> Response:
    """Evaluate every flag for the context in the body; the ETag covers the whole answer."""
    ofrep = _ofrep_evaluator(request)
    try:
        chosen = _selector(selector)
        context, targeting_key = await _context(request)
    except Refusal as refusal:
        return JSONResponse({"errorCode": refusal.error_code, "errorDetails": refusal.details}, status_code=400)
    loaded = ofrep.loaded
    if loaded is None:
        return _unavailable(request.app.state.publisher.last_error)
    published, evaluator = loaded
    items = []
    for key in sorted(published.document["flags"]):
        if _in_selection(published, key, chosen):
            resolution = _evaluate(evaluator, key, context, targeting_key)
            items.append(_failure(key, resolution) if resolution.error_code else _success(key, resolution))
    answer: dict[str, Any] = {"flags": items}
    if chosen.flag_set_id:
        answer["metadata"] = {"flagSetId": chosen.flag_set_id}
    body = json.dumps(answer, separators=(",", ":"), ensure_ascii=False).encode()
    # The answer depends on the context as well as the flags, so the ETag hashes the answer itself.
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if if_none_match is not None and etag in [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)
