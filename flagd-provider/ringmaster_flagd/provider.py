"""RingmasterProvider: OpenFeature flags evaluated in-process, from a file or from the Ringmaster service.

    api.set_provider_and_wait(RingmasterProvider("http://ringmaster:8080"))

Flags are evaluated locally by `Evaluator` (flagd's semantics, compiled); the source only delivers
documents. Events follow the source: PROVIDER_READY once a document is loaded (again after a loss
or an error), PROVIDER_CONFIGURATION_CHANGED with the keys a new document changes,
PROVIDER_STALE while the source cannot be reached (the last document keeps serving), and
PROVIDER_ERROR when the source delivers something that is not a valid document (the last good
document keeps serving). The service's last good document is also kept on disk, so an app that
starts while the service is down starts from it: ready at once, then stale until the service answers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import httpx
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEventDetails
from openfeature.exception import ErrorCode, ParseError, ProviderNotReadyError
from openfeature.flag_evaluation import FlagResolutionDetails, FlagValueType, Reason
from openfeature.provider import AbstractProvider, Metadata

from ringmaster_flagd.disk_cache import DocumentCache
from ringmaster_flagd.errors import DocumentError
from ringmaster_flagd.evaluator import Evaluator, FlagType
from ringmaster_flagd.file_source import FileWatcher
from ringmaster_flagd.http_source import ServiceFeed
from ringmaster_flagd.source import FileSource, ServiceSource, parse_source

logger = logging.getLogger("ringmaster_flagd.provider")

_REASONS: Final = {reason.value: reason for reason in Reason}
_ERROR_CODES: Final = {code.value: code for code in ErrorCode}
Status = Literal["not-ready", "ready", "stale", "error"]


class RingmasterProvider(AbstractProvider):
    """An OpenFeature provider for `source`: 'file:/path/flags.json' or 'http(s)://host:port'.

    `source` defaults to $RINGMASTER_FLAGS_SOURCE, `selector` (flagd's, e.g. 'flagSetId=web', for
    the service only) to $RINGMASTER_FLAGS_SELECTOR, `cache_dir` to $RINGMASTER_FLAGS_CACHE_DIR or
    ~/.cache/ringmaster/flags. The service is polled every `poll_interval_s` only while its change
    stream is down; a file is checked every `file_poll_interval_s`.
    """

    def __init__(
        self,
        source: str | None = None,
        *,
        selector: str | None = None,
        cache_dir: str | Path | None = None,
        poll_interval_s: float = 5.0,
        file_poll_interval_s: float = 0.5,
        timeout_s: float = 5.0,
    ) -> None:
        super().__init__()
        self.source = parse_source(source, selector)
        self._evaluator = Evaluator()
        self._cache = DocumentCache(self.source.name, cache_dir) if isinstance(self.source, ServiceSource) else None
        self._poll_interval_s = poll_interval_s
        self._file_poll_interval_s = file_poll_interval_s
        self._timeout_s = timeout_s
        self._status: Status = "not-ready"
        self._serving = False
        self._status_lock = threading.Lock()
        self._watcher: FileWatcher | None = None
        self._feed: ServiceFeed | None = None

    def get_metadata(self) -> Metadata:
        return Metadata(name="RingmasterProvider")

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        """Load the first document; raises (so OpenFeature reports PROVIDER_ERROR) when there is none.

        The source is followed from then on either way, so a provider that starts without flags
        becomes ready as soon as its source delivers them.
        """
        self.shutdown()
        if isinstance(self.source, FileSource):
            self._start_file(self.source)
        else:
            self._start_service(self.source)

    def shutdown(self) -> None:
        watcher, self._watcher = self._watcher, None
        feed, self._feed = self._feed, None
        if watcher is not None:
            watcher.stop()
        if feed is not None:
            feed.stop()

    def _start_file(self, source: FileSource) -> None:
        watcher = self._watcher = FileWatcher(source.path, self, self._file_poll_interval_s)
        try:
            self._load(watcher.read_now())
        except OSError as error:
            self._status = "error"
            watcher.start()
            raise ProviderNotReadyError(f"cannot read the flag file {source.path}: {error.strerror or error}") from None
        except DocumentError as error:
            self._status = "error"
            watcher.start()
            raise ParseError(str(error)) from None
        self._status = "ready"
        watcher.start()

    def _start_service(self, source: ServiceSource) -> None:
        assert self._cache is not None
        feed = self._feed = ServiceFeed(source, self, poll_interval_s=self._poll_interval_s, timeout_s=self._timeout_s)
        cached = self._cache.load()
        if cached is not None:
            try:
                self._load(cached.document)
                feed.etag = cached.etag
            except DocumentError as error:
                logger.warning("ignoring the cached flag document %s: %s", self._cache.path, error)
        connected = True
        try:
            fetched = feed.fetch()
            if fetched is not None:
                self._load(fetched)
                self._cache.save(fetched, feed.etag)
        except httpx.HTTPError as error:
            connected = False
            if not self._serving:
                self._status = "error"
                feed.start(connected)
                raise ProviderNotReadyError(
                    f"{feed.flags_url} did not answer ({error}) and no copy is kept in {self._cache.path}"
                ) from None
            logger.warning("%s did not answer (%s); starting from %s", feed.flags_url, error, self._cache.path)
        except DocumentError as error:
            self._status = "error"
            feed.start(connected)
            raise ParseError(str(error)) from None
        if not self._serving:
            self._status = "error"
            feed.start(connected)
            raise ProviderNotReadyError(f"{feed.flags_url} answered 304 Not Modified to a request for a first document")
        self._status = "ready"
        feed.start(connected)

    def _load(self, document: Mapping[str, Any]) -> list[str]:
        changed = self._evaluator.set_document(document)
        self._serving = True
        return changed

    # What the source reports (SourceListener), turned into OpenFeature events.

    def document_read(self, document: dict[str, Any], etag: str | None) -> None:
        try:
            changed = self._load(document)
        except DocumentError as error:
            self.document_unreadable(error)
            return
        if self._cache is not None:
            self._cache.save(document, etag)
        if self._become("ready"):
            self.emit_provider_ready(ProviderEventDetails(message="flags loaded"))
        if changed:
            self.emit_provider_configuration_changed(
                ProviderEventDetails(flags_changed=changed, metadata=dict(self._evaluator.flag_set_metadata))
            )

    def document_unreadable(self, error: DocumentError) -> None:
        logger.warning("keeping the last good flag document: %s", error)
        self._become("error")
        self.emit_provider_error(ProviderEventDetails(message=str(error), error_code=ErrorCode.PARSE_ERROR))

    def source_answering(self) -> None:
        if self._become("ready", only_from="stale"):
            self.emit_provider_ready(ProviderEventDetails(message="the flag source answers again"))

    def source_lost(self, reason: str) -> None:
        if self._become("stale", only_from="ready"):
            logger.warning("serving the last flag document: %s", reason)
            self.emit_provider_stale(ProviderEventDetails(message=reason))

    def _become(self, status: Status, only_from: Status | None = None) -> bool:
        """Move to `status`; whether that is a change (and from `only_from`, when given)."""
        with self._status_lock:
            if self._status == status or (only_from is not None and self._status != only_from):
                return False
            self._status = status
            return True

    # Evaluation.

    def _resolve(
        self, flag_key: str, flag_type: FlagType, default_value: Any, evaluation_context: EvaluationContext | None
    ) -> FlagResolutionDetails[Any]:
        if not self._serving:
            return FlagResolutionDetails(
                default_value,
                error_code=ErrorCode.PROVIDER_NOT_READY,
                error_message="no flag document has been loaded yet",
                reason=Reason.ERROR,
            )
        if evaluation_context is None:
            resolution = self._evaluator.resolve(flag_key, flag_type, default_value, {}, None)
        else:
            resolution = self._evaluator.resolve(
                flag_key, flag_type, default_value, evaluation_context.attributes, evaluation_context.targeting_key
            )
        error_code = resolution.error_code
        # Positional arguments: this runs for every evaluation, and keywords cost a third more here.
        return FlagResolutionDetails(
            resolution.value,
            None if error_code is None else _ERROR_CODES[error_code],
            resolution.error_message,
            _REASONS[resolution.reason],
            resolution.variant,
            resolution.flag_metadata,
        )

    def resolve_boolean_details(
        self, flag_key: str, default_value: bool, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[bool]:
        return self._resolve(flag_key, "boolean", default_value, evaluation_context)

    def resolve_string_details(
        self, flag_key: str, default_value: str, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[str]:
        return self._resolve(flag_key, "string", default_value, evaluation_context)

    def resolve_integer_details(
        self, flag_key: str, default_value: int, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[int]:
        return self._resolve(flag_key, "integer", default_value, evaluation_context)

    def resolve_float_details(
        self, flag_key: str, default_value: float, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[float]:
        return self._resolve(flag_key, "float", default_value, evaluation_context)

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: Sequence[FlagValueType] | Mapping[str, FlagValueType],
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Sequence[FlagValueType] | Mapping[str, FlagValueType]]:
        return self._resolve(flag_key, "object", default_value, evaluation_context)
