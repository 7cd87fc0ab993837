"""Deploy tracking against the store: each service's versions, ETag formats and verdicts.

Runs after settling, in event time: the latest deploy of a service is judged from the counts of
the minutes around it, up to the service's watermark, and a regression is recorded once (any
replica may record it). The deploy gauges are refreshed from the store on every pass.
"""

from __future__ import annotations

from collections.abc import Sequence

from collector.deploys import BASELINE_MAX_SECONDS, WATCH_SECONDS, Deploy, first_regression
from collector.metrics import Metrics
from collector.store import Store

# A version answering with more ETag formats than this is odd already; the gauge shows the first.
MAX_FORMATS_PER_VERSION = 10


class DeployTracker:
    """Judges every service's latest deploy and keeps the deploy gauges current."""

    def __init__(self, store: Store, metrics: Metrics, *, lateness: float) -> None:
        self.store = store
        self.metrics = metrics
        self.lateness = lateness
        self._exported: dict[str, tuple[str, bool]] = {}
        self._formats: dict[str, set[tuple[str, str]]] = {}
        # Deploys judged through their whole watch window with no verdict: nothing can change
        # their verdict any more, so they are not read again.
        self._closed: set[tuple[str, str, float]] = set()

    async def deploys(self, service: str) -> list[Deploy]:
        """Every known version of a service, oldest first, with formats and verdicts."""
        versions = await self.store.versions(service)
        formats = await self.store.formats(service)
        records = await self.store.deploy_records(service)
        return [
            Deploy(
                version=version,
                ts=ts,
                source=str(records.get(version, {}).get("source", "events")),
                formats=tuple(sorted(formats.get(version, {}))),
                regression=records.get(version, {}).get("regression"),
            )
            for version, ts in sorted(versions, key=lambda item: item[1])
        ]

    async def judge(self, service: str, *, settled: bool = False) -> Deploy | None:
        """Judge the latest deploy of `service`; return it (with any verdict).

        Failures are counted once settled, so a deploy is judged up to the watermark; with
        `settled` (after a flush settled everything) up to the newest event.
        """
        deploys = await self.deploys(service)
        newest = await self.store.watermark(service)
        if not deploys or newest is None:
            return None
        latest = deploys[-1]
        until = newest if settled else newest - self.lateness
        key = (service, latest.version, latest.ts)
        if latest.regression is None and len(deploys) > 1 and key not in self._closed:
            first = int((latest.ts - BASELINE_MAX_SECONDS) // 60)
            last = int(min(until, latest.ts + WATCH_SECONDS) // 60)
            minutes = await self.store.minute_counts(service, first, last)
            found = first_regression(minutes, latest.ts, until)
            if found is not None:
                regression, detected_at = found
                verdict: dict[str, object] = {
                    "detected_at": detected_at,
                    "cause": regression.cause,
                    "baseline_ratio": regression.baseline_ratio,
                    "ratio": regression.ratio,
                }
                await self.store.record_regression(service, latest.version, verdict)
                latest = Deploy(latest.version, latest.ts, latest.source, latest.formats, verdict)
            elif until >= latest.ts + WATCH_SECONDS:
                self._closed.add(key)
        self.export(service, latest, deploys[-2:-1])
        return latest

    def export(self, service: str, latest: Deploy, before: Sequence[Deploy] = ()) -> None:
        """Set the deploy gauges for the service's latest deploy, dropping the previous one,
        and the ETag formats of it and of the deploy `before` it."""
        m = self.metrics
        label = m.labels.service(service)
        version = m.labels.version(latest.version)
        regressed = latest.regression is not None
        previous = self._exported.get(label)
        if previous is not None and previous[0] != version:
            m.deploy_info.remove(label, previous[0])
            m.deploy_regression.remove(label, previous[0])
        m.deploy_info.labels(label, version).set(1)
        m.deploy_timestamp.labels(label).set(latest.ts)
        m.deploy_regression.labels(label, version).set(1 if regressed else 0)
        self._exported[label] = (version, regressed)
        formats = {
            (m.labels.version(d.version), fingerprint)
            for d in (*before, latest)
            for fingerprint in d.formats[:MAX_FORMATS_PER_VERSION]
        }
        for gone in self._formats.get(label, set()) - formats:
            m.etag_format.remove(label, *gone)
        for known in formats:
            m.etag_format.labels(label, *known).set(1)
        self._formats[label] = formats

    async def judge_all(self, *, settled: bool = False) -> None:
        for service in await self.store.services():
            await self.judge(service, settled=settled)
