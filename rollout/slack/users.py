"""Who may do what through Slack: the allowlist of Slack user ids and the role each one holds.

`RINGMASTER_SLACK_USERS="U01ABC=releaser,U02DEF=puller"`: entries separated by commas or
whitespace (so the list may also live in a file, one entry a line), each a Slack member id and a
role of rollout/auth/tokens.py. Ids, not names: a Slack display name can be changed by its owner,
the id cannot. A Slack user not on the list may do nothing, not even read the cord's state.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from rollout.auth.tokens import ROLES, AuthError, Role, allows, check_role

# Slack member ids: U… in a workspace, W… in an Enterprise Grid organisation.
SLACK_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")
EXAMPLE = "U01ABC=releaser,U02DEF=puller"


def parse_slack_users(raw: str) -> dict[str, Role]:
    """The allowlist written in `raw`; ValueError saying which entry is wrong and how to write it."""
    users: dict[str, Role] = {}
    for entry in re.split(r"[,\s]+", raw.strip()):
        if not entry:
            continue
        user_id, equals, role = entry.partition("=")
        if not equals or not SLACK_USER_ID.match(user_id):
            raise ValueError(f"{entry!r} is not a Slack member id and a role; write e.g. {EXAMPLE} (a member id is "
                             "under a person's Slack profile, ⋮ > Copy member ID)")
        try:
            held = check_role(role)
        except AuthError as error:
            raise ValueError(f"{entry!r}: {error}") from None
        if users.get(user_id, held) != held:
            raise ValueError(f"{user_id} is listed twice, as {users[user_id]} and as {held}; keep one")
        users[user_id] = held
    return users


def refusal(users: Mapping[str, Role], user_id: str, needed: Role, doing: str) -> str | None:
    """Why Slack user `user_id` may not do `doing`, which needs role `needed`; None when they may."""
    held = users.get(user_id)
    if allows(held, needed):
        return None
    if held is None:
        return (f"You are not on Ringmaster's Slack allowlist, so you cannot {doing}; nothing was changed. Ask a "
                f"Ringmaster admin to add `{user_id}={needed}` to RINGMASTER_SLACK_USERS.")
    return (f"To {doing} takes the {needed} role or a higher one ({', '.join(ROLES)}, lowest first); you hold {held}, "
            "so nothing was changed.")
