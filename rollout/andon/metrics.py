"""The cord as Prometheus sees it, read from the database at each scrape: every replica of the
service reports the same numbers, and the counters survive restarts (they count the record)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from rollout.andon.store import AndonStore

log = logging.getLogger(__name__)


class AndonCollector(Collector):
    def __init__(self, store: AndonStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        try:
            active = self.store.active()
            counts = self.store.counts()
        except SQLAlchemyError as error:
            # No number is better than a wrong one: the scrape shows the cord's metrics missing.
            log.warning("andon metrics: the database cannot be read: %s", error)
            return
        pulled = GaugeMetricFamily("ringmaster_andon_active", "Active pulls of the andon cord, by scope kind "
                                   "(0 everywhere: the line runs)", labels=["scope"])
        for kind in ("global", "namespace", "rollout"):
            pulled.add_metric([kind], sum(1 for pull in active if pull.scope.kind == kind))
        yield pulled
        yield CounterMetricFamily("ringmaster_andon_pulls", "Pulls of the andon cord ever recorded",
                                  value=counts["pull"])
        yield CounterMetricFamily("ringmaster_andon_releases", "Releases of the andon cord ever recorded",
                                  value=counts["release"])
