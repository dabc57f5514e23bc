"""Informers: how the controller observes Kubernetes. Each one lists one kind of object, watches it from
the list's resourceVersion, keeps every object in a cache, and tells a handler what changed.

Level-triggered: the handler learns *that* an object changed (and, every resync, that it still exists)
and the reconcile reads the cache; a lost event costs latency, never correctness. The informer survives
everything the API does to a watch: a server that ends it (re-watch from the last resourceVersion, which
bookmarks keep fresh), 410 Gone (relist; objects gone meanwhile are reported DELETED; a 410 again before the
new watch delivered anything waits like an error, so a server expiring every watch is not relisted in a tight
loop), and errors or an unreachable server (retry with capped, jittered exponential backoff, for as long as it
runs).

Objects are the API's JSON as plain dicts. Threads: one per informer lists, watches and calls the handler;
one replays the cache every resync. The handler is never called by both at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger(__name__)

KubeObject = dict[str, Any]
CacheKey = tuple[str, str]  # (namespace, "" for cluster-scoped kinds; name)
ChangeHandler = Callable[[str, KubeObject], None]
# Informer has a method named `list`, so its signatures spell query parameters with this alias.
Query = list[tuple[str, Any]]

SYNC = "SYNC"
WATCH_EVENT_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED"})
CONNECT_TIMEOUT_S = 10.0
LIST_PAGE_SIZE = 500
RETRY_BASE_DELAY_S = 0.5
RETRY_MAX_DELAY_S = 30.0
# stop() waits this long for the threads; only a request still awaiting the server's answer, or a slow handler,
# holds one longer, and the threads are daemons.
STOP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ResourceKind:
    """Where the API serves one kind of object: group ("" for core), version and plural resource name."""

    group: str
    version: str
    plural: str

    def path(self, namespace: str | None) -> str:
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        return f"{root}/namespaces/{namespace}/{self.plural}" if namespace else f"{root}/{self.plural}"

    def __str__(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


STATEFULSETS = ResourceKind("apps", "v1", "statefulsets")


@dataclass
class InformerStats:
    """Counters of what the informer did, for metrics and tests."""

    lists: int = 0
    watches: int = 0
    relists_after_gone: int = 0
    bookmarks: int = 0
    errors: int = 0


class ResourceVersionExpired(Exception):
    """The server no longer keeps the resourceVersion to go on from (410 Gone): only a relist can help."""


class Informer:
    """A cache of one kind of object, kept current by list-then-watch, with a handler told of every change.

    `on_change(event_type, obj)` gets ADDED, MODIFIED or DELETED from the watch, DELETED for objects found
    gone by a relist, and SYNC for every object on each list and resync. The cache already holds the change
    when the handler runs. The handler, get() and list() hand out the cache's own objects, without a copy
    (a controller with thousands of objects cannot afford one per read): callers must not change them.
    The informer never changes a cached object either; a change replaces it."""

    def __init__(
        self,
        api_client: client.ApiClient,
        kind: ResourceKind,
        on_change: ChangeHandler,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        watch_timeout_s: int = 300,
        request_timeout_s: float = 330.0,
        resync_s: float = 300.0,
        name: str | None = None,
    ) -> None:
        if request_timeout_s <= watch_timeout_s:
            raise ValueError(
                f"request_timeout_s ({request_timeout_s}) must be longer than watch_timeout_s ({watch_timeout_s}): "
                "the client gives up on a silent connection only after the server would have ended the watch"
            )
        self.kind = kind
        self.namespace = namespace
        self.name = name or (f"{kind}/{namespace}" if namespace else str(kind))
        self.stats = InformerStats()
        self._api_client = api_client
        self._on_change = on_change
        self._label_selector = label_selector
        self._watch_timeout_s = watch_timeout_s
        self._request_timeout_s = request_timeout_s
        self._resync_s = resync_s
        self._path = kind.path(namespace)
        self._cache: dict[CacheKey, KubeObject] = {}
        self._cache_lock = threading.Lock()
        self._dispatch_lock = threading.Lock()
        self._synced = threading.Event()
        self._stopping = threading.Event()
        self._resource_version: str | None = None
        self._failures = 0
        # 410s in a row with nothing delivered between them: the second and later ones back off.
        self._expirations = 0
        self._watch_response: urllib3.BaseHTTPResponse | None = None
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """List and watch in a daemon thread, and resync in another, until stop()."""
        if self._threads:
            raise RuntimeError(f"informer {self.name} was started before; an informer runs once, make a new one")
        self._threads = [
            threading.Thread(target=self._list_and_watch, name=f"informer {self.name}", daemon=True),
            threading.Thread(target=self._resync_periodically, name=f"resync {self.name}", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """End the watch (its connection is shut down, not waited out) and the threads."""
        self._stopping.set()
        self._interrupt_watch()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(STOP_TIMEOUT_S)

    @property
    def running(self) -> bool:
        """Whether a thread of this informer is still alive (stop() ends them)."""
        return any(thread.is_alive() for thread in self._threads)

    def wait_synced(self, timeout_s: float) -> bool:
        """True once the first list has filled the cache; False if that did not happen within `timeout_s`."""
        return self._synced.wait(timeout_s)

    def get(self, namespace: str, name: str) -> KubeObject | None:
        """The cached object (namespace "" for cluster-scoped kinds), or None."""
        with self._cache_lock:
            cached = self._cache.get((namespace, name))
        return cached

    def list(self, namespace: str | None = None) -> list[KubeObject]:
        """Every cached object, or those of one namespace, sorted by namespace and name."""
        with self._cache_lock:
            cached = sorted(
                (key, obj) for key, obj in self._cache.items() if namespace is None or key[0] == namespace
            )
        return [obj for _, obj in cached]

    # The list-and-watch thread

    def _list_and_watch(self) -> None:
        expired = False
        while not self._stopping.is_set():
            try:
                if self._resource_version is None:
                    self._relist()
                    if expired:
                        self.stats.relists_after_gone += 1
                        expired = False
                self._watch()
            except ResourceVersionExpired as error:
                self._resource_version = None
                expired = True
                self._expirations += 1
                if self._expirations == 1:
                    log.info("informer %s: %s; listing again", self.name, error)
                    continue
                # Expired again straight after a relist: listing at once would only repeat it, as fast as it can.
                delay_s = self._backoff_s(self._expirations - 2)
                log.warning("informer %s: %s again before the watch delivered anything; listing again in %.1f s",
                            self.name, error, delay_s)
                self._stopping.wait(delay_s)
            except Exception as error:  # the thread must outlive any failure, so the cache recovers
                if self._stopping.is_set():
                    break
                self.stats.errors += 1
                delay_s = self._retry_delay_s()
                log.warning("informer %s: %s; trying again in %.1f s", self.name, _describe(error), delay_s)
                self._stopping.wait(delay_s)

    def _retry_delay_s(self) -> float:
        delay_s = self._backoff_s(self._failures)
        self._failures += 1
        return delay_s

    @staticmethod
    def _backoff_s(attempt: int) -> float:
        # The exponent stops growing long after the cap is reached, so a long outage cannot overflow the float.
        capped_s = min(RETRY_MAX_DELAY_S, RETRY_BASE_DELAY_S * 2.0 ** min(attempt, 16))
        # Jitter, so that informers cut off together do not all come back at the same instant.
        return random.uniform(capped_s / 2, capped_s)

    def _relist(self) -> None:
        listed, resource_version = self._list_pages()
        with self._dispatch_lock:
            with self._cache_lock:
                vanished = [obj for key, obj in self._cache.items() if key not in listed]
                self._cache = listed
            self._resource_version = resource_version
            self._failures = 0
            self.stats.lists += 1
            self._synced.set()
            for obj in vanished:
                self._notify("DELETED", obj)
            for obj in listed.values():
                self._notify(SYNC, obj)
        log.info("informer %s: listed %d objects at resourceVersion %s", self.name, len(listed), resource_version)

    def _list_pages(self) -> tuple[dict[CacheKey, KubeObject], str]:
        listed: dict[CacheKey, KubeObject] = {}
        continue_token = ""
        while True:
            query: Query = [*self._selector_query(), ("limit", LIST_PAGE_SIZE)]
            if continue_token:
                query.append(("continue", continue_token))
            response = self._request(query)
            try:
                page = json.loads(response.read())
            finally:
                response.release_conn()
            # List items come without kind and apiVersion; watch events carry them, so give every object both.
            kind = str(page.get("kind", "")).removesuffix("List")
            for item in page.get("items") or []:
                item.setdefault("apiVersion", page.get("apiVersion"))
                item.setdefault("kind", kind)
                listed[_cache_key(item)] = item
            metadata = page.get("metadata") or {}
            continue_token = metadata.get("continue") or ""
            if not continue_token:
                return listed, str(metadata["resourceVersion"])

    def _watch(self) -> None:
        """Follow one watch until the server ends it, applying each event."""
        query: Query = [
            *self._selector_query(),
            ("watch", True),
            ("resourceVersion", self._resource_version),
            ("allowWatchBookmarks", True),
            ("timeoutSeconds", self._watch_timeout_s),
        ]
        self.stats.watches += 1
        response = self._request(query)
        self._watch_response = response
        try:
            # stop() may have run before the response was there to shut down.
            if self._stopping.is_set():
                return
            self._failures = 0
            for line in iter_resp_lines(response):
                if self._stopping.is_set():
                    return
                if line.strip():
                    self._apply(json.loads(line))
            self._expirations = 0  # the server served this watch to its end
        finally:
            self._watch_response = None
            response.close()
            response.release_conn()

    def _apply(self, event: dict[str, Any]) -> None:
        event_type = event.get("type")
        obj: KubeObject = event.get("object") or {}
        if event_type == "ERROR":
            # The object is a Status; 410 arrives this way when the watch starts too far back.
            if obj.get("code") == 410:
                raise ResourceVersionExpired(f"the watch expired (410 Gone: {obj.get('message')})")
            raise ApiException(status=obj.get("code"), reason=f"watch error: {obj.get('message')}")
        resource_version = (obj.get("metadata") or {}).get("resourceVersion")
        self._expirations = 0
        if event_type == "BOOKMARK":
            self.stats.bookmarks += 1
            if resource_version:
                self._resource_version = str(resource_version)
            return
        if event_type not in WATCH_EVENT_TYPES:
            log.debug("informer %s: ignoring a watch event of type %s", self.name, event_type)
            return
        key = _cache_key(obj)
        with self._dispatch_lock:
            with self._cache_lock:
                if event_type == "DELETED":
                    self._cache.pop(key, None)
                else:
                    self._cache[key] = obj
            if resource_version:
                self._resource_version = str(resource_version)
            self._notify(event_type, obj)

    def _request(self, query: Query) -> urllib3.BaseHTTPResponse:
        """GET this informer's collection; the response is unread, so a watch can stream it."""
        method, url, headers, body, post_params = self._api_client.param_serialize(
            "GET",
            self._path,
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = self._api_client.call_api(
            method, url, headers, body, post_params, _request_timeout=(CONNECT_TIMEOUT_S, self._request_timeout_s)
        )
        if not 200 <= response.status <= 299:
            response.read()
            error = ApiException(http_resp=response)
            if error.status == 410:
                raise ResourceVersionExpired(f"the list or watch expired (410 Gone: {error.body})") from error
            raise error
        raw: urllib3.BaseHTTPResponse = response.response
        return raw

    def _selector_query(self) -> Query:
        return [("labelSelector", self._label_selector)] if self._label_selector else []

    def _interrupt_watch(self) -> None:
        response = self._watch_response
        if response is not None:
            # Unblocks the read at once; the watch thread closes the response. Fails only if it already did.
            with contextlib.suppress(OSError, ValueError, RuntimeError):
                response.shutdown()

    # The resync thread

    def _resync_periodically(self) -> None:
        while not self._stopping.wait(self._resync_s):
            with self._cache_lock:
                keys = list(self._cache)
            for key in keys:
                # Object by object, so watch events are not held up; each SYNC shows the latest cached state.
                with self._dispatch_lock:
                    with self._cache_lock:
                        obj = self._cache.get(key)
                    if obj is not None and not self._stopping.is_set():
                        self._notify(SYNC, obj)

    def _notify(self, event_type: str, obj: KubeObject) -> None:
        try:
            self._on_change(event_type, obj)
        except Exception:
            # A handler bug must not stall the informer, nor make it relist.
            metadata = obj.get("metadata") or {}
            log.exception(
                "informer %s: the handler failed on %s of %s/%s",
                self.name,
                event_type,
                metadata.get("namespace", ""),
                metadata.get("name"),
            )


def _cache_key(obj: KubeObject) -> CacheKey:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name"))


def _describe(error: BaseException) -> str:
    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason}"
    if isinstance(error, urllib3.exceptions.MaxRetryError) and error.reason is not None:
        return f"cannot reach the API server ({error.reason})"
    return f"{type(error).__name__}: {error}"
