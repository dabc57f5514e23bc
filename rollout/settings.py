"""Settings of the Ringmaster service, read from the environment (RINGMASTER_*)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cohorts.assign import DEFAULT_MAX_MATERIALIZED_KEYS
from cohorts.db import database_url
from rollout.auth.tokens import Role
from rollout.slack.users import parse_slack_users

DEFAULT_SLACK_API_URL = "https://slack.com/api/"
MIB = 1024 * 1024
DEFAULT_MAX_BODY_BYTES = 1 * MIB
# `ringmaster usage ingest` sends 10,000 rows a request: 1.6 KiB a row on average fits.
DEFAULT_MAX_USAGE_BODY_BYTES = 16 * MIB
DEFAULT_AUTH_FAILURE_LIMIT = 10
DEFAULT_AUTH_FAILURE_WINDOW_S = 60


class SettingsError(ValueError):
    """An environment variable holds something Ringmaster cannot use."""


def _positive_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    if not raw.strip().isdigit() or int(raw) <= 0:
        raise SettingsError(f"{name}={raw!r} is not a positive whole number; set e.g. {name}={default}")
    return int(raw)


def _whole_number(name: str, default: int) -> int:
    """A setting where 0 turns something off."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    if not raw.strip().isdigit():
        raise SettingsError(f"{name}={raw!r} is not a whole number; set e.g. {name}={default}, or 0 to turn it off")
    return int(raw)


TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off", "")


def _boolean(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    if raw.strip().lower() in TRUE_WORDS:
        return True
    if raw.strip().lower() in FALSE_WORDS:
        return False
    raise SettingsError(f"{name}={raw!r} is not true or false; set {name}=true or {name}=false")


def _kubeconfig() -> Path | None:
    raw = os.environ.get("RINGMASTER_KUBECONFIG") or os.environ.get("KUBECONFIG")
    return Path(raw).expanduser() if raw else None


def _text(name: str) -> str | None:
    return os.environ.get(name, "").strip() or None


def _slack_api_url() -> str:
    url = _text("RINGMASTER_SLACK_API_URL") or DEFAULT_SLACK_API_URL
    if not url.startswith(("https://", "http://")):
        raise SettingsError(f"RINGMASTER_SLACK_API_URL={url!r} is not an http(s) URL; leave it unset for Slack's "
                            f"{DEFAULT_SLACK_API_URL}")
    return url if url.endswith("/") else url + "/"  # WebClient joins method names onto it


def _slack_users() -> dict[str, Role]:
    try:
        return parse_slack_users(os.environ.get("RINGMASTER_SLACK_USERS", ""))
    except ValueError as error:
        raise SettingsError(f"RINGMASTER_SLACK_USERS: {error}") from None


def _origin(raw: str) -> str:
    origin = raw.strip().rstrip("/").lower()
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query or parts.fragment \
            or "@" in parts.netloc:
        raise SettingsError(f"RINGMASTER_CORS_ORIGINS: {raw.strip()!r} is not an origin; give each as "
                            "scheme://host[:port], e.g. https://console.example.com, separated by commas")
    return origin


def _cors_origins() -> tuple[str, ...]:
    """The origins whose scripts may call the API from a browser; none unless listed."""
    return tuple(dict.fromkeys(_origin(raw) for raw in os.environ.get("RINGMASTER_CORS_ORIGINS", "").split(",")
                               if raw.strip()))


@dataclass(frozen=True)
class ServiceSettings:
    # Never in a repr (a PostgreSQL URL may hold a password), so never in a log or a traceback's locals.
    database_url: str = field(repr=False)
    max_materialized_keys: int = DEFAULT_MAX_MATERIALIZED_KEYS
    # flagd's sync gRPC service: None serves none (`serve --sync-port 0`), 0 listens on any free port.
    sync_port: int | None = None
    sync_host: str = "127.0.0.1"
    # Whether other processes listen on the sync port too: the workers of `serve --workers N` (SO_REUSEPORT).
    sync_shared_port: bool = False
    # The rollout routes' Kubernetes; None: in-cluster, else the local control plane's, else none (503).
    kubeconfig: Path | None = None
    # Whether GET routes under /api/v1 need a viewer token; writes always need a token.
    reads_require_token: bool = False
    # Whether the andon cord must be released by someone other than whoever pulled it.
    andon_release_by_other: bool = False
    # Slack (docs/slack.md): /slack/events answers 503 unless the signing secret and the bot token are set.
    slack_signing_secret: str | None = field(default=None, repr=False)
    slack_bot_token: str | None = field(default=None, repr=False)
    slack_channel: str | None = None  # where pulls and releases are announced; None announces nowhere
    slack_api_url: str = DEFAULT_SLACK_API_URL
    slack_users: Mapping[str, Role] = field(default_factory=dict)  # Slack member id -> role
    # Request bodies (docs/security.md): larger ones are refused with 413 before they are read whole.
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_usage_body_bytes: int = DEFAULT_MAX_USAGE_BODY_BYTES  # POST /api/v1/usage, whose batches are large
    # Browser origins allowed to call the API (CORS); none by default.
    cors_origins: tuple[str, ...] = ()
    # After this many failed authentications from one address within the window, its attempts get 429
    # until the window has passed; 0 turns the limit off. Per process.
    auth_failure_limit: int = DEFAULT_AUTH_FAILURE_LIMIT
    auth_failure_window_s: int = DEFAULT_AUTH_FAILURE_WINDOW_S

    @classmethod
    def from_environment(cls) -> ServiceSettings:
        return cls(
            database_url=database_url(),
            max_materialized_keys=_positive_int("RINGMASTER_MAX_MATERIALIZED_KEYS", DEFAULT_MAX_MATERIALIZED_KEYS),
            kubeconfig=_kubeconfig(),
            reads_require_token=_boolean("RINGMASTER_READS_REQUIRE_TOKEN", False),
            andon_release_by_other=_boolean("RINGMASTER_ANDON_RELEASE_BY_OTHER", False),
            slack_signing_secret=_text("RINGMASTER_SLACK_SIGNING_SECRET"),
            slack_bot_token=_text("RINGMASTER_SLACK_BOT_TOKEN"),
            slack_channel=_text("RINGMASTER_SLACK_CHANNEL"),
            slack_api_url=_slack_api_url(),
            slack_users=_slack_users(),
            max_body_bytes=_positive_int("RINGMASTER_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
            max_usage_body_bytes=_positive_int("RINGMASTER_MAX_USAGE_BODY_BYTES", DEFAULT_MAX_USAGE_BODY_BYTES),
            cors_origins=_cors_origins(),
            auth_failure_limit=_whole_number("RINGMASTER_AUTH_FAILURE_LIMIT", DEFAULT_AUTH_FAILURE_LIMIT),
            auth_failure_window_s=_positive_int("RINGMASTER_AUTH_FAILURE_WINDOW_SECONDS",
                                                DEFAULT_AUTH_FAILURE_WINDOW_S),
        )
