"""What a request signed by Slack must hold before Bolt sees it: the slash command `/andon` with its user and
response_url, or one of the two interactions Ringmaster offers (the red button, the reason modal) with what
their listeners read. Anything else is refused with 400 naming each field at fault, before any listener runs:
a listener acknowledges first, so one failing on a missing field afterwards would fail silently.

The body is parsed here, not by Bolt's parser, which takes any body containing the text "payload" for an
interaction, so a slash command whose text says "payload" would reach the listeners empty.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from cohorts.errors import field_path
from rollout.slack.messages import COMMAND, PULL_BUTTON, REASON_BLOCK, REASON_INPUT, REASON_VIEW

FORM = "application/x-www-form-urlencoded"


class BadSlackRequest(ValueError):
    """A request signed by Slack that is not one Ringmaster acts on; `errors` name the fields at fault."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{error['field']}: {error['message']}" for error in errors))


class _Slack(BaseModel):
    # Slack sends many more fields than a listener reads; only those it reads are checked.
    model_config = ConfigDict(extra="allow")


def _must_be(expected: str) -> Any:
    def check(cls: type, value: str) -> str:
        if value != expected:
            raise ValueError(f"is {value!r}; Ringmaster answers {expected!r} only")
        return value
    return check


class SlashCommand(_Slack):
    command: str
    user_id: str = Field(min_length=1)
    response_url: str = Field(min_length=1)
    text: str = ""

    _is_andon = field_validator("command")(_must_be(COMMAND))


class SlackUser(_Slack):
    id: str = Field(min_length=1)


class PullAction(_Slack):
    action_id: str

    _is_the_button = field_validator("action_id")(_must_be(PULL_BUTTON))


class ButtonClick(_Slack):
    type: Literal["block_actions"]
    user: SlackUser
    trigger_id: str = Field(min_length=1)
    actions: list[PullAction] = Field(min_length=1, max_length=1)
    response_url: str | None = None


class ReasonInput(_Slack):
    value: str | None = None


class ViewState(_Slack):
    values: dict[str, dict[str, ReasonInput]]

    @field_validator("values")
    @classmethod
    def _has_the_reason(cls, values: dict[str, dict[str, ReasonInput]]) -> dict[str, dict[str, ReasonInput]]:
        if REASON_INPUT not in values.get(REASON_BLOCK, {}):
            raise ValueError(f"holds no {REASON_BLOCK}.{REASON_INPUT}, the reason the modal asks for")
        return values


class ReasonView(_Slack):
    callback_id: str
    private_metadata: str = ""
    state: ViewState

    _is_the_modal = field_validator("callback_id")(_must_be(REASON_VIEW))

    @field_validator("private_metadata")
    @classmethod
    def _is_an_object(cls, value: str) -> str:
        # What the button put there: {"response_url": ...}; Slack returns it untouched.
        try:
            parsed = json.loads(value or "{}")
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise ValueError("is not the JSON object the pull button sets")
        return value


class ReasonSubmitted(_Slack):
    type: Literal["view_submission"]
    user: SlackUser
    view: ReasonView


Interaction = TypeAdapter(Annotated[ButtonClick | ReasonSubmitted, Field(discriminator="type")])


def _errors(error: ValidationError, prefix: str, data: Any) -> list[dict[str, str]]:
    return [{"in": "body",
             "field": ".".join(filter(None, (prefix, field_path(item["loc"], data, missing=item["type"] == "missing"))))
             or "body",
             "message": "is required" if item["type"] == "missing" else item["msg"]}
            for item in error.errors()]


def slack_request(body: bytes, content_type: str | None) -> dict[str, Any]:
    """The fields of a slash command, or the payload of an interaction; BadSlackRequest when it is neither."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type != FORM:
        raise BadSlackRequest([{"in": "header", "field": "Content-Type",
                                "message": f"Slack sends {FORM}, not {media_type or 'no content type'}"}])
    form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    if "payload" not in form:
        try:
            SlashCommand.model_validate(form)
        except ValidationError as error:
            raise BadSlackRequest(_errors(error, "", form)) from None
        return form
    try:
        payload = json.loads(form["payload"])
    except json.JSONDecodeError as error:
        raise BadSlackRequest([{"in": "body", "field": "payload", "message": f"is not JSON ({error})"}]) from None
    try:
        Interaction.validate_python(payload)
    except ValidationError as error:
        raise BadSlackRequest(_errors(error, "payload", payload)) from None
    if not isinstance(payload, dict):  # validated as an object just above; this tells the type checker
        raise BadSlackRequest([{"in": "body", "field": "payload", "message": "is not an object"}])
    return payload
