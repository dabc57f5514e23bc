"""The FastAPI application behind `ringmaster serve`: routes, problem handlers, health and metrics."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import text

from cohorts.cache import CompiledSetCache
from cohorts.db import current_revision, head_revision, is_known_revision, make_engine
from cohorts.store import CohortStore
from rollout.andon.metrics import AndonCollector
from rollout.andon.store import AndonStore
from rollout.api import andon, cohorts, dashboard, flagd, flags, ofrep, rollouts
from rollout.api.access_log import ACCESS_LOGGER, WithoutQueryString
from rollout.api.auth import install_auth_handlers
from rollout.api.limits import BodyLimits, install_body_limits
from rollout.api.problems import install_problem_handlers, install_problem_schema, problem, problems
from rollout.api.ratelimit import AuthFailures, install_auth_failure_limit
from rollout.api.sync import SyncServer
from rollout.auth.tokens import TokenStore
from rollout.flags.document import compile_flags
from rollout.flags.publisher import FlagPublisher
from rollout.flags.store import FlagStore
from rollout.settings import ServiceSettings
from rollout.slack import app as slack

# HOST:PORT of the flagd sync service the workers of `ringmaster serve --workers N` share; empty: none.
WORKERS_SYNC_ADDRESS_ENV = "RINGMASTER_WORKERS_SYNC_ADDRESS"
CORS_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
CORS_REQUEST_HEADERS = ("Authorization", "Content-Type", "If-Match", "If-None-Match", "Flagd-Selector")
CORS_RESPONSE_HEADERS = ("ETag", "Location", "Retry-After", "WWW-Authenticate")


class ServiceMetrics:
    """The service's own registry, so several apps (as in tests) never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ringmaster_http_requests", "HTTP requests served", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "ringmaster_http_request_duration_seconds", "Time to serve an HTTP request", ["method", "route"],
            registry=self.registry,
        )
        self.assignments = Counter(
            "ringmaster_assignments", "Users placed in a ring through the explain API", ["cohort_set", "ring"],
            registry=self.registry,
        )
        self.flag_documents = Counter(
            "ringmaster_flag_documents_published", "Flag documents published (each one changed)",
            registry=self.registry,
        )
        self.flag_streams = Gauge(
            "ringmaster_flag_streams", "Open flag document streams (SSE and gRPC SyncFlags)", registry=self.registry
        )


def create_app(settings: ServiceSettings | None = None, clock: Callable[[], float] = time.monotonic) -> FastAPI:
    """The service; `clock` (monotonic seconds) times the limit on failed authentications."""
    chosen = settings or ServiceSettings.from_environment()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(chosen.database_url)
        app.state.engine = engine
        app.state.store = store = CohortStore(engine)
        app.state.tokens = TokenStore(engine)
        app.state.compiled_sets = compiled_sets = CompiledSetCache(store, max_keys=chosen.max_materialized_keys)
        app.state.flags = flag_store = FlagStore(engine, store)
        app.state.publisher = publisher = FlagPublisher(
            lambda: compile_flags(flag_store, compiled_sets, datetime.now(UTC)), store.change_marker
        )
        metrics: ServiceMetrics = app.state.metrics
        publisher.add_listener(lambda published: metrics.flag_documents.inc())
        metrics.flag_streams.set_function(lambda: publisher.subscriber_count)
        app.state.ofrep = ofrep.OfrepEvaluator(publisher)
        app.state.kubernetes = kubernetes = rollouts.Kubernetes(chosen.kubeconfig)
        app.state.andon_store = andon_store = AndonStore(engine)
        cord_metrics = AndonCollector(andon_store)
        metrics.registry.register(cord_metrics)
        # Slack as far as it is configured: app.state.andon_announcer is Silent() without a bot token and channel.
        app.state.slack = slack_connection = slack.SlackConnection(chosen, andon_store)
        app.state.andon_announcer = slack_connection.announcer
        publisher.start()
        # uvicorn configures its loggers before the app starts, so its access log is filtered from here.
        access_filter = WithoutQueryString()
        logging.getLogger(ACCESS_LOGGER).addFilter(access_filter)
        sync_server = None if chosen.sync_port is None else SyncServer(
            publisher, chosen.sync_host, chosen.sync_port, shared_port=chosen.sync_shared_port)
        try:
            if sync_server is not None:
                app.state.sync_port = sync_server.start()
            yield
        finally:
            if sync_server is not None:
                sync_server.stop()
            publisher.stop()
            logging.getLogger(ACCESS_LOGGER).removeFilter(access_filter)
            kubernetes.close()
            slack_connection.close()
            metrics.registry.unregister(cord_metrics)
            engine.dispose()

    app = FastAPI(
        title="Ringmaster",
        version="0.1.0",
        summary="Release rings by user cohort: cohort sets, assignment, flags served as flagd, flagd sync and OFREP, "
                "and the Rollouts that move a new version ring by ring.",
        lifespan=lifespan,
    )
    app.state.settings = chosen
    app.state.metrics = ServiceMetrics()
    install_problem_handlers(app)
    install_problem_schema(app)
    install_auth_handlers(app)
    app.include_router(cohorts.router)
    app.include_router(flags.router)
    app.include_router(flagd.router)
    app.include_router(ofrep.router)
    app.include_router(slack.router)
    app.include_router(rollouts.router)
    app.include_router(andon.router)
    app.include_router(dashboard.router)
    # Middleware added later wraps what was added before: from the outside in, CORS, measure (below), the
    # limit on failed authentications, then the body limits.
    install_body_limits(app, BodyLimits.from_settings(chosen))
    install_auth_failure_limit(app, AuthFailures(chosen.auth_failure_limit, chosen.auth_failure_window_s, clock))

    @app.middleware("http")
    async def measure(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        # The route template, not the raw path, so label values stay few.
        template = getattr(route, "path", "unmatched")
        metrics: ServiceMetrics = request.app.state.metrics
        metrics.requests.labels(request.method, template, str(response.status_code)).inc()
        metrics.latency.labels(request.method, template).observe(time.perf_counter() - started)
        return response

    if chosen.cors_origins:
        # Closed unless origins are listed: browsers then let exactly those pages' scripts call the API with a
        # bearer token they hold (no cookies, so no credentials mode).
        app.add_middleware(
            CORSMiddleware, allow_origins=list(chosen.cors_origins), allow_methods=list(CORS_METHODS),
            allow_headers=list(CORS_REQUEST_HEADERS), expose_headers=list(CORS_RESPONSE_HEADERS),
        )

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The process is up and serving."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses=problems(503, s503="the database is unreachable or behind"))
    def readyz(request: Request) -> Response:
        """The database answers and its schema is at the revision this build expects."""
        try:
            with request.app.state.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            revision = current_revision(request.app.state.engine)
        except Exception as error:  # any failure to reach the database means not ready
            return problem(503, "not-ready", "The database is unreachable", f"{type(error).__name__}: {error}")
        head = head_revision()
        if revision is not None and not is_known_revision(revision):
            return problem(
                503, "not-ready", "The database schema is newer than this build",
                f"the database is at revision {revision}, which a newer Ringmaster migrated to; this build knows "
                f"revisions up to {head}: run the newer version (upgrades go database first, then every process)",
            )
        if revision != head:
            return problem(
                503, "not-ready", "The database schema is behind",
                f"the database is at revision {revision}, this build needs {head}; run `ringmaster db upgrade`",
            )
        return JSONResponse({"status": "ready", "schemaRevision": revision})

    @app.get("/metrics", tags=["health"], response_class=Response)
    def metrics(request: Request) -> Response:
        return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def app_from_environment() -> FastAPI:
    """The app of each process of `ringmaster serve --workers N`.

    uvicorn starts every worker by importing this factory by name, so nothing can be handed over but the
    environment: the RINGMASTER_* settings as always, and the sync service's address, which the workers
    share (SO_REUSEPORT), in RINGMASTER_WORKERS_SYNC_ADDRESS.
    """
    settings = ServiceSettings.from_environment()
    address = os.environ.get(WORKERS_SYNC_ADDRESS_ENV, "")
    if address:
        host, port = address.rsplit(":", 1)
        settings = replace(settings, sync_host=host, sync_port=int(port), sync_shared_port=True)
    return create_app(settings)
