"""Ingesting a batch: records to events, events to the store, and what it did (to count)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from collector.etag import fingerprint, parse_etag
from collector.event import Defaults, Event, EventError, check_request_service, parse_event
from collector.payload import PayloadError, Record
from collector.pseudonym import PlainIds, ResourceIds
from collector.store import Store, StoreUnavailableError


@dataclass(slots=True)
class BatchResult:
    """The answer to one batch: counts and a per-record error list."""

    accepted: int = 0
    duplicates: int = 0
    rejected: list[dict[str, object]] = field(default_factory=list)
    services: set[str] = field(default_factory=set)

    def body(self) -> dict[str, object]:
        return {"accepted": self.accepted, "duplicates": self.duplicates, "rejected": self.rejected}


def parse_records(
    records: Sequence[Record], defaults: Defaults, resource_ids: ResourceIds | None = None
) -> tuple[list[Event], list[dict[str, object]]]:
    """Events from decoded records, and `{"index", "error"}` for each one that is not one.

    Every event stored passes here: with `resource_ids` hashing (PW_RESOURCE_ID_KEY), each
    event leaves with its resource id's stored form, and the raw id goes no further."""
    events: list[Event] = []
    rejected: list[dict[str, object]] = []
    for record in records:
        if record.error is not None:
            rejected.append({"index": record.index, "error": record.error})
            continue
        try:
            event = parse_event(record.value, defaults)
        except EventError as exc:
            rejected.append({"index": record.index, "error": str(exc)})
            continue
        if resource_ids is not None:
            # Still part of building the event: nothing has seen it yet.
            event.resource_id = resource_ids.stored(event.resource_id)
        events.append(event)
    return events, rejected


class FormatTracker:
    """Fingerprints the ETags of a batch, skipping the ones whose shape was fingerprinted before.

    Fingerprinting every ETag costs more than parsing its event. ETags of one format share a
    length, weakness and dash count, so that shape is remembered with its fingerprint; every
    `resample`-th ETag of a known shape is fingerprinted anyway to catch a new format that
    happens to share it.
    """

    def __init__(self, resample: int = 64, max_shapes: int = 10_000) -> None:
        self._known: dict[tuple[str, str, int, bool, int], str] = {}
        self._resample = resample
        self._max_shapes = max_shapes
        self._counter = 0

    def formats(self, events: Sequence[Event]) -> list[tuple[str, str, str, float]]:
        seen: dict[tuple[str, str, str], float] = {}
        for event in events:
            etag = event.current_etag
            version = event.deploy_version
            if not (etag and version):
                continue
            shape = (event.service, version, len(etag), etag[:2] == "W/", etag.count("-"))
            found = self._known.get(shape)
            self._counter += 1
            if found is None or self._counter % self._resample == 0:
                tag = parse_etag(etag)
                if tag is None:
                    continue
                found = fingerprint(tag)
                if len(self._known) >= self._max_shapes:
                    self._known.clear()
                self._known[shape] = found
            key = (event.service, version, found)
            seen[key] = min(seen.get(key, event.ts), event.ts)
        return [(s, v, f, ts) for (s, v, f), ts in seen.items()]


RequestCounts = dict[tuple[str, str | None, str | None, int], int]


@dataclass(slots=True)
class StoredBatch:
    """What storing a batch did, before anything is counted: its answer, the stored requests
    by label set (service, route, method, status), or why Redis stored nothing."""

    result: BatchResult
    requests: RequestCounts
    unavailable: str | None = None


class Ingestor:
    """Parses and stores batches; what a stored batch adds to the metrics is counting.py's.

    Apart from the counting so that an ingest process can store a batch and the serving
    process, which owns the metrics, count it.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_clock_skew: float,
        resource_ids: ResourceIds | None = None,
    ) -> None:
        self.store = store
        self.max_clock_skew = max_clock_skew
        self.resource_ids = resource_ids or PlainIds()
        self.formats = FormatTracker()

    async def store_batch(
        self,
        records: Sequence[Record],
        *,
        default_service: str | None,
        received_at: float | None = None,
    ) -> StoredBatch:
        """Parse and store; `unavailable` says why nothing was acknowledged if Redis failed.

        Raises PayloadError (400) when the request names a service no event could have."""
        received_at = time.time() if received_at is None else received_at
        try:
            service = check_request_service(default_service)
        except EventError as exc:
            raise PayloadError(400, f"?service= or X-Service-Name: {exc.problem}") from None
        defaults = Defaults(service, received_at, self.max_clock_skew)
        events, rejected = parse_records(records, defaults, self.resource_ids)
        result = BatchResult(rejected=rejected)

        # A request id twice in one batch is a duplicate before Redis is even asked.
        unique: list[Event] = []
        seen: set[tuple[str, str]] = set()
        for event in events:
            key = (event.service, event.request_id)
            if key in seen:
                result.duplicates += 1
            else:
                seen.add(key)
                unique.append(event)

        try:
            stored = await self.store.ingest(
                unique, received_at, formats=self.formats.formats(unique)
            )
        except StoreUnavailableError as exc:
            return StoredBatch(result, {}, unavailable=str(exc))
        counts: RequestCounts = {}
        for event, is_new in zip(unique, stored.stored, strict=True):
            if is_new:
                result.accepted += 1
                result.services.add(event.service)
                labels = (event.service, event.route, event.method, event.status)
                counts[labels] = counts.get(labels, 0) + 1
            else:
                result.duplicates += 1
        return StoredBatch(result, counts)
