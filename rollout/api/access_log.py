"""uvicorn's access log without query strings: the method, the path and the status of each request.

A query string is the client's to fill, and a client may put in it what must never be written down
(a token as `?access_token=`, a user's attributes in `explain`); the path and the status are what an
operator reads the access log for.
"""

from __future__ import annotations

import logging

ACCESS_LOGGER = "uvicorn.access"


class WithoutQueryString(logging.Filter):
    """Cuts the query string from the path of uvicorn's access records, `(client, method, path, version, status)`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, version, status = record.args
            record.args = (client, method, str(path).split("?", 1)[0], version, status)
        return True
