"""The andon cord in Slack (docs/slack.md): the `/andon` command, its red button and reason modal
behind `POST /slack/events` (app.py), the allowlist of who may do what (users.py), and the
announcements of pulls and releases in a channel (announce.py)."""
