"""A small HTTP client of the Ringmaster API, used by the CLI; it speaks only the public API."""

from __future__ import annotations

import json
import os
from typing import Any

import httpx

DEFAULT_SERVER = "http://127.0.0.1:8080"
TOKEN_ENV = "RINGMASTER_TOKEN"
# Pulls and releases record where they came from; the API tells the CLI by its user agent.
CLI_AGENT = {"User-Agent": "ringmaster-cli"}


class ClientError(Exception):
    """The server refused a request (its problem document is kept) or could not be reached."""

    def __init__(self, message: str, problem: dict[str, Any] | None = None) -> None:
        self.problem = problem
        super().__init__(message)


def server_url() -> str:
    return os.environ.get("RINGMASTER_SERVER", DEFAULT_SERVER)


class RingmasterClient:
    def __init__(self, base_url: str | None = None, token: str | None = None, timeout_s: float = 30.0) -> None:
        """`token` (default $RINGMASTER_TOKEN) is sent with every request; the server names changes after it."""
        self.base_url = (base_url or server_url()).rstrip("/")
        token = (token or os.environ.get(TOKEN_ENV) or "").strip()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **options: Any) -> Any:
        try:
            response = self._http.request(method, path, **options)
        except httpx.TransportError as error:
            raise ClientError(
                f"cannot reach Ringmaster at {self.base_url} ({error}); start it with `ringmaster serve` "
                "or point RINGMASTER_SERVER / --server at it"
            ) from error
        if response.status_code >= 400:
            try:
                problem = response.json()
            except json.JSONDecodeError:
                problem = {"detail": response.text}
            detail = problem.get("detail") or problem.get("title") or response.reason_phrase
            raise ClientError(f"{response.status_code} {detail}", problem)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def list_sets(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.request("GET", "/api/v1/cohort-sets")["items"]
        return items

    def get_set(self, name: str, version: int | None = None) -> dict[str, Any]:
        params = {"version": version} if version else {}
        result: dict[str, Any] = self.request("GET", f"/api/v1/cohort-sets/{name}", params=params)
        return result

    def apply_set(self, spec: dict[str, Any], comment: str | None = None) -> dict[str, Any]:
        """Create the cohort set, or make a new version of it when it exists."""
        name = spec.get("name")
        params = {"comment": comment} if comment else {}
        try:
            current = self.get_set(str(name))
        except ClientError as error:
            if not error.problem or error.problem.get("status") != 404:
                raise
            created: dict[str, Any] = self.request("POST", "/api/v1/cohort-sets", json=spec, params=params)
            return created
        updated: dict[str, Any] = self.request(
            "PUT", f"/api/v1/cohort-sets/{name}", json=spec, params=params,
            headers={"If-Match": f'"{current["version"]}"'},
        )
        return updated

    def explain(
        self, name: str, targeting_key: str, attributes: dict[str, Any], epoch: int | None = None
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"targetingKey": targeting_key}
        if attributes:
            params["attributes"] = json.dumps(attributes)
        if epoch is not None:
            params["epoch"] = epoch
        result: dict[str, Any] = self.request("GET", f"/api/v1/cohort-sets/{name}/explain", params=params)
        return result

    def estimate(self, name: str, keys: list[str] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "GET", f"/api/v1/cohort-sets/{name}/estimate", params={"keys": keys} if keys else {}
        )
        return result

    def flagd(self, name: str, epoch: int | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "GET", f"/api/v1/cohort-sets/{name}/flagd", params={"epoch": epoch} if epoch is not None else {}
        )
        return result

    def set_opt(self, name: str, targeting_key: str, choice: str) -> None:
        self.request("PUT", f"/api/v1/cohort-sets/{name}/opt/{targeting_key}", json={"choice": choice})

    def clear_opt(self, name: str, targeting_key: str) -> None:
        self.request("DELETE", f"/api/v1/cohort-sets/{name}/opt/{targeting_key}")

    def ingest_usage(self, rows: list[dict[str, Any]]) -> int:
        stored: int = self.request("POST", "/api/v1/usage", json={"rows": rows})["stored"]
        return stored

    def audit(self, subject: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if subject:
            params["subject"] = subject
        items: list[dict[str, Any]] = self.request("GET", "/api/v1/audit", params=params)["items"]
        return items

    def list_flags(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.request("GET", "/api/v1/flags")["items"]
        return items

    def get_flag(self, key: str, version: int | None = None) -> dict[str, Any]:
        params = {"version": version} if version else {}
        result: dict[str, Any] = self.request("GET", f"/api/v1/flags/{key}", params=params)
        return result

    def find_flag(self, key: str) -> dict[str, Any] | None:
        """The flag's current version, or None when there is no flag with that key."""
        try:
            return self.get_flag(key)
        except ClientError as error:
            if error.problem and error.problem.get("status") == 404:
                return None
            raise

    def apply_flag(self, spec: dict[str, Any], comment: str | None = None) -> dict[str, Any]:
        """Create the flag, or make a new version of it when it exists."""
        key = str(spec.get("key"))
        params = {"comment": comment} if comment else {}
        current = self.find_flag(key)
        if current is None:
            created: dict[str, Any] = self.request("POST", "/api/v1/flags", json=spec, params=params)
            return created
        updated: dict[str, Any] = self.request(
            "PUT", f"/api/v1/flags/{key}", json=spec, params=params, headers={"If-Match": f'"{current["version"]}"'}
        )
        return updated

    def set_flag_enabled(self, key: str, enabled: bool, comment: str | None = None) -> dict[str, Any]:
        params = {"comment": comment} if comment else {}
        result: dict[str, Any] = self.request(
            "POST", f"/api/v1/flags/{key}/{'enable' if enabled else 'disable'}", params=params
        )
        return result

    def list_rollouts(self, namespace: str | None = None) -> list[dict[str, Any]]:
        params = {"namespace": namespace} if namespace else {}
        items: list[dict[str, Any]] = self.request("GET", "/api/v1/rollouts", params=params)["items"]
        return items

    def get_rollout(self, namespace: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/api/v1/rollouts/{namespace}/{name}")
        return result

    def rollout_gates(self, namespace: str, name: str, limit: int | None = None) -> dict[str, Any]:
        """Where the gates of the ring being baked stand, and the latest measurements kept in the database."""
        params = {"limit": limit} if limit is not None else {}
        result: dict[str, Any] = self.request("GET", f"/api/v1/rollouts/{namespace}/{name}/gates", params=params)
        return result

    def act_on_rollout(self, namespace: str, name: str, action: str, reason: str | None = None) -> dict[str, Any]:
        """promote, pause, resume, abort or retry; the answer is the rollout's summary and the request set."""
        result: dict[str, Any] = self.request(
            "POST", f"/api/v1/rollouts/{namespace}/{name}/{action}", json={"reason": reason} if reason else None
        )
        return result

    # The andon cord

    def andon_pull(self, reason: str, namespace: str | None = None, rollout: str | None = None) -> dict[str, Any]:
        scope = {key: value for key, value in (("namespace", namespace), ("rollout", rollout)) if value}
        pulled: dict[str, Any] = self.request("POST", "/api/v1/andon/pull", json={"reason": reason, "scope": scope},
                                              headers=CLI_AGENT)
        return pulled

    def andon_release(self, pull_id: int, reason: str) -> dict[str, Any]:
        released: dict[str, Any] = self.request("POST", "/api/v1/andon/release",
                                                json={"id": pull_id, "reason": reason}, headers=CLI_AGENT)
        return released

    def andon_status(self) -> dict[str, Any]:
        cord: dict[str, Any] = self.request("GET", "/api/v1/andon")
        return cord

    def andon_history(self, limit: int = 50) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.request("GET", "/api/v1/andon/history", params={"limit": limit})["items"]
        return items
