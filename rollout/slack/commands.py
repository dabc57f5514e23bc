"""What `/andon <text>` asks for (pure): help, the status, a pull, or a release.

`pull <reason>`; `release <reason>` when one pull is active, `release <id> <reason>` (or `#<id>`)
to name one; `status`; nothing or `help` for the help and its button. The reason is checked where it
is used (rollout/andon/scope.py `check_reason`), so Slack and the API say the same about it.
"""

from __future__ import annotations

from dataclasses import dataclass

from rollout.auth.tokens import Role


@dataclass(frozen=True)
class Help:
    problem: str | None = None  # what was not understood, when the text was not a command


@dataclass(frozen=True)
class Status:
    pass


@dataclass(frozen=True)
class PullCord:
    reason: str


@dataclass(frozen=True)
class ReleaseCord:
    reason: str
    pull_id: int | None = None  # None: the one active pull


AndonCommand = Help | Status | PullCord | ReleaseCord

NEEDED: dict[type[AndonCommand], tuple[Role, str]] = {
    Help: ("viewer", "use /andon"),
    Status: ("viewer", "see the andon cord's state"),
    PullCord: ("puller", "pull the andon cord"),
    ReleaseCord: ("releaser", "release the andon cord"),
}


def needed(command: AndonCommand) -> tuple[Role, str]:
    """The role `command` takes, and what it does in words for a refusal."""
    return NEEDED[type(command)]


def _first_word(text: str) -> tuple[str, str]:
    words = text.split(maxsplit=1)
    return (words[0], words[1].strip()) if len(words) == 2 else (words[0] if words else "", "")


def parse(text: str) -> AndonCommand:
    verb, rest = _first_word(text)
    match verb.lower():
        case "" | "help":
            return Help()
        case "status":
            return Status()
        case "pull":
            return PullCord(rest)
        case "release":
            first, after = _first_word(rest)
            number = first.removeprefix("#")
            if number.isascii() and number.isdigit():
                return ReleaseCord(after, int(number))
            return ReleaseCord(rest)
    return Help(problem=f"`{verb[:40]}` is not an andon command.")
