"""Correlation state in Redis: ETag lineage, timelines, pending failures, dedupe and deploys.

The operations over that state, as commands sent through a transport (collector/transport.py);
the key schema and the codecs of what is kept under it are in collector/keys.py, the scripts in
collector/scripts/. A batch's events are written with plain commands sent together: HSETNX of
each record (the dedupe), ZADD NX of the timeline and conflict members, then one script call
that gives every key its TTL back. Each is idempotent, so a retried batch changes nothing that
is already there and repairs what its first attempt did not reach. A second round trip then
writes what the newly stored events add to their service: pending failures, indexes, counts.
The per-service scripts take one service's keys; the TTL and trim scripts take the resources of
a whole batch, in one call on a single Redis and in one call per slot on a Redis Cluster (the
transport's `slot_groups`), where transactions are per slot too. Settling reads with plain
commands and walks the timelines here (collector/snapshot.py). Every key has a TTL of at most
`retention_seconds`, refreshed when written; the sets inside are capped.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
import redis.asyncio as aioredis

from collector import scripts
from collector.classify import CLOCK_SKEW_SECONDS, PriorFailure, Sighting
from collector.cluster import ClusterTransport
from collector.event import FAILURE_STATUSES, Event
from collector.keys import (
    DECISION,
    INDEX_BUCKET_SECONDS,
    INDEXED,
    RS,
    SERVICES_KEY,
    US,
    PendingFailure,
    decode_conflict,
    decode_format,
    decode_json,
    decode_pending,
    decode_sighting,
    encode_conflict,
    encode_format,
    encode_record,
    encode_sighting,
    records_key,
    request_of_member,
    resource_prefix,
    service_prefix,
)
from collector.settings import Settings
from collector.snapshot import Walk
from collector.transport import (
    BulkTransport,
    Command,
    PackInC,
    RedisPyTransport,
    StoreUnavailableError,
    Transport,
    check,
    is_noscript,
)

__all__ = ["PendingFailure", "Store", "StoreUnavailableError"]

# Lua's unpack() is bounded by the C stack; the Python side cuts argument lists to this.
MAX_EVENTS_PER_KEY = 1000
# The 412/409s read per failure at most: enough to see a blind retry loop.
CONFLICT_LIMIT = 200
# A claim this old is stuck (settling one takes milliseconds): a flush takes it over.
STUCK_CLAIM_SECONDS = 2.0
# Sightings since the newest write kept per failure at most: enough to see replicas flip.
SPAN_LIMIT = 32
_SCRIPTS = scripts.load()
_SHAS = {name: hashlib.sha1(source.encode()).hexdigest() for name, source in _SCRIPTS.items()}


@dataclass(slots=True)
class FailureContext:
    """Everything the store knows around one failure, read in one round trip."""

    failure: PendingFailure
    record: dict[str, Any] | None
    lineage: list[Sighting]
    prior_conflicts: list[PriorFailure]
    # The decision another settler stored (and may not have counted: it died before that).
    decision: dict[str, Any] | None


# Whether a failure, by its record, needs more of its lineage read (settle.py asks the
# classifier).
LineageNeed = Callable[[PendingFailure, dict[str, Any]], bool]


class SettleInputs(NamedTuple):
    """What settling a claimed batch reads: each failure's context and its service's deploys."""

    contexts: list[FailureContext]
    formats: dict[str, dict[str, float]]
    versions: list[tuple[str, float]]


class Backlog(NamedTuple):
    """Failures not yet settled, and the event-time lag of the oldest one."""

    pending: int
    lag_seconds: float


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What storing a batch did: per event, stored (True) or duplicate (False)."""

    stored: list[bool]


def _service_commands(
    service: str,
    new: list[Event],
    formats: list[tuple[str, str, float]],
    *,
    now_ms: int,
    ttl: int,
    bucket: int,
    bucket_ttl: int,
) -> list[tuple[Any, ...]]:
    """One service's share of a batch as plain commands: the request and ETag indexes, the
    pending failures, deploy versions and formats, per-minute counts and the watermark, for
    the events this batch indexes (`new`)."""
    sp = service_prefix(service)
    commands: list[tuple[Any, ...]] = []
    # One pass over the new events (this runs for every event stored).
    requests: list[str] = []  # only failures have a decision to look up by request id
    owners: dict[str, str] = {}
    versions: dict[str, float] = {}
    hot: dict[tuple[int, str], int] = {}
    minutes: dict[int, int] = {}
    for e in new:
        status = e.status
        minute = int(e.ts // 60)
        minutes[minute] = minutes.get(minute, 0) + 1
        if status in FAILURE_STATUSES:
            requests += (e.request_id, e.resource_id)
            if status != 428:
                key = (minute, e.resource_id)
                hot[key] = hot.get(key, 0) + 1
        elif 200 <= status < 300 and e.current_etag:
            owners[e.current_etag] = e.resource_id
        version = e.deploy_version
        if version and (version not in versions or e.ts < versions[version]):
            versions[version] = e.ts
    if requests:
        commands += [
            ("HSET", f"{sp}q:{bucket}", *requests),
            ("EXPIRE", f"{sp}q:{bucket}", bucket_ttl),
        ]
    if owners:
        commands += [
            ("HSET", f"{sp}x:{bucket}", *[x for pair in owners.items() for x in pair]),
            ("EXPIRE", f"{sp}x:{bucket}", bucket_ttl),
        ]
    pending: list[str] = []
    for e in new:
        if e.status in FAILURE_STATUSES:
            pending += (repr(e.ts), PendingFailure.of(e).member)
    if pending:
        commands.append(("ZADD", sp + "p", "NX", *pending))
    if versions:
        first = [x for version, ts in versions.items() for x in (repr(ts), version)]
        commands += [("ZADD", sp + "v", "LT", *first), ("EXPIRE", sp + "v", ttl)]
    if formats:
        seen = [x for version, fp, ts in formats for x in (repr(ts), encode_format(version, fp))]
        commands += [("ZADD", sp + "f", "LT", *seen), ("EXPIRE", sp + "f", ttl)]
    for (minute, resource), n in hot.items():
        commands.append(("ZINCRBY", f"{sp}h:{minute}", n, resource))
    for minute in {minute for minute, _ in hot}:
        commands.append(("EXPIRE", f"{sp}h:{minute}", ttl))
    for minute, n in minutes.items():
        commands += [("HINCRBY", f"{sp}n:{minute}", "req", n), ("EXPIRE", f"{sp}n:{minute}", ttl)]
    newest = repr(max(e.ts for e in new))
    commands += [
        ("ZADD", sp + "m", "GT", newest, "max"),
        ("ZADD", sp + "m", now_ms, "seen"),
        ("EXPIRE", sp + "m", ttl),
        ("EXPIRE", sp + "p", ttl),  # a no-op unless it holds failures
    ]
    return commands


def _by_time(sighting: Sighting) -> float:
    return sighting.ts


def _pairs(reply: Any) -> list[tuple[bytes, Any]]:
    """ZRANGE WITHSCORES or HGETALL as (member, value) pairs: flat from hiredis, already
    paired or a dict from redis-py."""
    if isinstance(reply, dict):
        return list(reply.items())
    return list(zip(*_members_and_scores(reply), strict=True))


def _members_and_scores(reply: Any) -> tuple[list[bytes], list[Any]]:
    """ZRANGE WITHSCORES as its members and their scores, apart."""
    if reply and isinstance(reply[0], list | tuple):
        return [member for member, _ in reply], [score for _, score in reply]  # redis-py
    return reply[::2], reply[1::2]


def _versions(reply: list[Any]) -> list[tuple[str, float]]:
    """ZRANGE WITHSCORES of `v`: (version, first event time), oldest first."""
    return [(v.decode(), float(ts)) for v, ts in _pairs(reply)]


def _formats(reply: list[Any]) -> dict[str, dict[str, float]]:
    """ZRANGE WITHSCORES of `f`: {version: {fingerprint: first event time}}."""
    out: dict[str, dict[str, float]] = {}
    for member, ts in _pairs(reply):
        version, fingerprint = decode_format(member)
        out.setdefault(version, {})[fingerprint] = float(ts)
    return out


class Store:
    """Async access to the correlation state; raises StoreUnavailableError on Redis faults."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        retention_seconds: int,
        timeline_max_events: int = 2000,
        lineage_max_writes: int = 100,
        embedded: bool = False,
        observer: Callable[[str, float, bool], None] | None = None,
        transport: Transport | None = None,
    ) -> None:
        # Typed as Any: redis-py annotates replies as unions of every RESP shape. Only ping()
        # and the tests use it; every operation goes through the transport.
        self.client: Any = client
        self.transport: Transport = transport or RedisPyTransport(client)
        self.retention = retention_seconds
        self.timeline_cap = timeline_max_events
        self.writes_cap = lineage_max_writes
        self.embedded = embedded
        self._batches = 0
        # Called with (operation, seconds, failed) after every round trip: Redis latency metrics.
        self.observer = observer

    @classmethod
    def from_url(cls, url: str | None, **options: Any) -> Store:
        """A store on `url`, or on an in-process fakeredis when `url` is None."""
        timeout = options.pop("timeout", 5.0)
        cluster = options.pop("cluster", False)
        if url is None:
            import fakeredis  # the embedded default; production sets PW_REDIS_URL

            return cls(fakeredis.FakeAsyncRedis(), embedded=True, **options)
        if cluster:
            # redis-py's cluster client only serves ping() and the tests' inspection; no
            # retries of its own: a dead node must fail fast, the callers retry.
            cluster_client = aioredis.RedisCluster.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=min(2.0, timeout)
            )
            seed = dict(aioredis.connection.parse_url(url))
            routed = ClusterTransport(seed, timeout=timeout)
            return cls(cluster_client, transport=routed, **options)  # type: ignore[arg-type]
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=min(2.0, timeout),
            health_check_interval=30,
        )
        pool = client.connection_pool
        plain = pool.connection_class in (aioredis.Connection, aioredis.UnixDomainSocketConnection)
        # The URL picked TCP, TLS or a Unix socket; keep that class, pack commands in C.
        pool.connection_class = type(
            "Packed" + pool.connection_class.__name__,
            (PackInC, pool.connection_class),
            {},
        )
        transport = BulkTransport(pool.connection_kwargs, timeout=timeout) if plain else None
        return cls(client, transport=transport, **options)

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        """The store every collector process opens: PW_REDIS_URL with the configured caps."""
        return cls.from_url(
            settings.redis_url,
            retention_seconds=settings.retention_seconds,
            timeline_max_events=settings.timeline_max_events,
            lineage_max_writes=settings.lineage_max_writes,
            timeout=settings.redis_timeout_seconds,
            cluster=settings.redis_cluster,
        )

    async def close(self) -> None:
        await self.transport.close()
        await self.client.aclose()

    async def ping(self) -> bool:
        try:
            (reply,) = check(await self.transport.run([("PING",)]))
        except StoreUnavailableError:
            return False
        return reply in (True, b"PONG")

    async def is_cluster_node(self) -> bool:
        """Whether Redis runs in cluster mode (`INFO cluster`); False where it cannot say."""
        try:
            (info,) = check(await self.transport.run([("INFO", "cluster")]))
        except StoreUnavailableError:
            return False
        if isinstance(info, dict):  # redis-py parses INFO (fakeredis); hiredis leaves it raw
            return bool(info.get("cluster_enabled"))
        return b"cluster_enabled:1" in info

    # -- plumbing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _observed(self, operation: str) -> Iterator[None]:
        """Time one round trip for the Redis latency metrics, failed or not."""
        started = time.perf_counter()
        failed = True
        try:
            yield
            failed = False
        finally:
            if self.observer is not None:
                self.observer(operation, time.perf_counter() - started, failed)

    async def _call(self, operation: str, *command: Any) -> Any:
        """One plain command's reply."""
        return (await self._commands(operation, [command]))[0]

    def _per_slot(self, script: str, keys: Sequence[str], *args: Any) -> list[Command]:
        """Calls of a script that takes any number of keys and the same ARGV: one per slot on
        a cluster (a script's keys must share one), one for all of them on a single Redis."""
        return [
            ("EVALSHA", script, len(group), *[keys[i] for i in group], *args)
            for group in self.transport.slot_groups(keys)
        ]

    async def _commands(
        self,
        operation: str,
        commands: Sequence[Command],
        *,
        scripts: bool = False,
        atomic: bool = False,
    ) -> list[Any]:
        """Commands in one round trip; raises StoreUnavailableError if any failed.

        With `scripts`, a command may call one of collector/scripts by name,
        `("EVALSHA", "claim", numkeys, ...)`; the name is swapped for its SHA here. Where Redis
        does not know a script (a restart, or a cluster node that never ran it), only those
        calls are sent again, as EVAL with the source, which also caches it there: the plain
        commands beside them already ran, and running an HSETNX twice would turn a new event
        into a duplicate. With `atomic` (plain commands only), they run as one transaction.
        """
        with self._observed(operation):
            if not scripts:
                return check(await self.transport.run(commands, atomic=atomic))
            replies = await self.transport.run(
                [(c[0], _SHAS[c[1]], *c[2:]) if c[0] == "EVALSHA" else c for c in commands]
            )
            lost = [i for i, reply in enumerate(replies) if is_noscript(reply)]
            if lost:
                again = await self.transport.run(
                    [("EVAL", _SCRIPTS[commands[i][1]], *commands[i][2:]) for i in lost]
                )
                for i, reply in zip(lost, again, strict=True):
                    replies[i] = reply
            return check(replies)

    # -- ingest -----------------------------------------------------------------------------

    async def ingest(
        self,
        events: Sequence[Event],
        now: float | None = None,
        *,
        formats: Sequence[tuple[str, str, str, float]] = (),
    ) -> IngestResult:
        """Store a batch: dedupe, timelines, lineage, then pending failures and indexes.

        Each event's record is set with HSETNX, which is the dedupe: the first copy of a
        request id wins and later ones change nothing. Timeline and conflict members are added
        with ZADD NX, so a retried event (same member) is a no-op there too, and one whose
        first attempt died between the two is repaired. A failure that was stored but never
        reached the pending set is queued again when the shipper retries. (A request id that a
        service reuses for a different event keeps its first record, but the second event's
        own timeline member is added: the price of a single round trip.)
        """
        if not events:
            return IngestResult([])
        now = time.time() if now is None else now
        by_resource: dict[tuple[str, str], list[int]] = {}
        for index, event in enumerate(events):
            by_resource.setdefault((event.service, event.resource_id), []).append(index)

        ttl = str(self.retention)  # hiredis packs a str several times faster than an int
        commands: list[tuple[Any, ...]] = []
        record_reply = [0] * len(events)  # where each event's HSETNX answer will be
        record_keys: list[str] = []
        written: list[str] = []  # every key, for their TTL
        for (service, resource), indexes in by_resource.items():
            prefix = resource_prefix(service, resource)
            e = prefix + "e"
            record_keys.append(e)
            timeline: list[Any] = ["ZADD", prefix + "z", "NX"]
            conflicts: list[Any] = ["ZADD", prefix + "f", "NX"]
            for index in indexes:
                event = events[index]
                record_reply[index] = len(commands)
                commands.append(("HSETNX", e, event.request_id, encode_record(event)))
                ts = repr(event.ts)
                timeline += (ts, encode_sighting(event))
                if event.status in (409, 412) and event.if_match:
                    conflicts += (ts, encode_conflict(event))
            commands.append(tuple(timeline))
            written += (e, prefix + "z")
            if len(conflicts) > 3:
                commands.append(tuple(conflicts))
                written.append(prefix + "f")
        commands += self._per_slot("expire", written, ttl)
        replies = await self._commands("ingest", commands, scripts=True)
        recorded = [bool(replies[at]) for at in record_reply]
        fresh = await self._unindexed(events, recorded)

        self._batches += 1
        # Trimming costs a few calls per resource; every 32nd batch keeps the caps close
        # (a resource overshoots by at most its events of 31 batches) at a fraction of that.
        if self._batches % 32 == 1:
            trim = self._per_slot("trim", record_keys, self.timeline_cap)
            await self._commands("trim", trim, scripts=True)
        await self._store_service_state(events, fresh, now, formats)
        return IngestResult(fresh)

    async def _unindexed(self, events: Sequence[Event], recorded: list[bool]) -> list[bool]:
        """Which events this batch must index: the ones it recorded, and duplicates whose
        first copy was recorded but never indexed (that attempt died between its two round
        trips, and the shipper is retrying it)."""
        fresh = list(recorded)
        retried = [i for i, is_new in enumerate(recorded) if not is_new]
        if retried:
            # A decided failure was indexed too: on a cluster its flag is written after its
            # service state, so a node lost in between may have taken the flag alone.
            checks = [
                (
                    "HMGET",
                    records_key(events[i].service, events[i].resource_id),
                    INDEXED + events[i].request_id,
                    DECISION + events[i].request_id,
                )
                for i in retried
            ]
            flags = await self._commands("ingest", checks)
            for index, (indexed, decided) in zip(retried, flags, strict=True):
                fresh[index] = indexed is None and decided is None
        return fresh

    async def _store_service_state(
        self,
        events: Sequence[Event],
        fresh: list[bool],
        now: float,
        formats: Sequence[tuple[str, str, str, float]],
    ) -> None:
        """What the batch's events add to their services (pending failures, indexes, versions,
        formats, counts, watermark) and each event's index flag, in one transaction: an event
        is indexed whole or not at all, so a retry can tell which events to index again. (On a
        cluster, one transaction per slot: see below.)"""
        new: dict[str, list[Event]] = {}
        flags: dict[str, list[str]] = {}
        for event, is_fresh in zip(events, fresh, strict=True):
            if is_fresh:
                new.setdefault(event.service, []).append(event)
                e = records_key(event.service, event.resource_id)
                flags.setdefault(e, []).extend((INDEXED + event.request_id, ""))
        if not new:
            return
        format_items: dict[str, list[tuple[str, str, float]]] = {}
        for service, version, fingerprint, ts in formats:
            format_items.setdefault(service, []).append((version, fingerprint, ts))
        now_ms = int(now * 1000)
        bucket = int(now // INDEX_BUCKET_SECONDS)
        # A bucket expires `retention` after it began: no entry outlives the retention.
        bucket_ttl = max(1, bucket * INDEX_BUCKET_SECONDS + self.retention - int(now))
        commands: list[tuple[Any, ...]] = []
        for service, mine in new.items():
            commands += _service_commands(
                service,
                mine,
                format_items.get(service, []),
                now_ms=now_ms,
                ttl=self.retention,
                bucket=bucket,
                bucket_ttl=bucket_ttl,
            )
        seen = [x for service in new for x in (now_ms, service)]
        commands += [
            ("ZADD", SERVICES_KEY, *seen),
            ("ZREMRANGEBYSCORE", SERVICES_KEY, "-inf", now_ms - self.retention * 1000),
            ("EXPIRE", SERVICES_KEY, self.retention),
        ]
        indexed = [("HSET", e, *fields) for e, fields in flags.items()]
        if self.transport.single_node:
            await self._commands("store_service_state", commands + indexed, atomic=True)
            return
        # A cluster runs one transaction per slot: the flags go last, so an event flagged as
        # indexed always is, and one a lost node left unflagged is indexed again by its retry.
        await self._commands("store_service_state", commands, atomic=True)
        await self._commands("store_service_state", indexed, atomic=True)

    # -- settling ---------------------------------------------------------------------------

    async def claim_due(
        self,
        service: str,
        *,
        lateness: float,
        now: float | None = None,
        force: bool = False,
        limit: int = 1000,
        lease_seconds: float = 60.0,
    ) -> list[PendingFailure]:
        """Claim the failures of `service` that its watermark (or idleness, or force) let go.

        Each failure is handed to exactly one caller, whichever replica asks first; one whose
        settler died is handed out again after its lease.
        """
        now = time.time() if now is None else now
        args: list[Any] = [int(now * 1000), lateness, lateness, int(lease_seconds * 1000), limit]
        args += ["1" if force else "0", self.retention, int(STUCK_CLAIM_SECONDS * 1000)]

        claim = ("EVALSHA", "claim", 1, service_prefix(service) + "p", *args)
        (members,) = await self._commands("claim_due", [claim], scripts=True)
        return [decode_pending(service, member) for member in members]

    async def load_contexts(
        self,
        failures: Sequence[PendingFailure],
        *,
        window: float,
        conflict_limit: int = CONFLICT_LIMIT,
    ) -> list[FailureContext]:
        """Each failure's record, the lineage its If-Match needs, and the 412/409s in the
        window before it (collector/snapshot.py)."""
        contexts, _ = await self._read_contexts(failures, window, conflict_limit)
        return contexts

    async def settle_inputs(
        self,
        service: str,
        failures: Sequence[PendingFailure],
        *,
        window: float,
        needs_lineage: LineageNeed | None = None,
    ) -> SettleInputs:
        """`load_contexts` of a claimed batch with its service's `formats` and `versions`, in
        the same round trips; a walk stops early where `needs_lineage` says no."""
        sp = service_prefix(service)
        deploys: list[Command] = [
            ("ZRANGE", sp + "f", 0, -1, "WITHSCORES"),
            ("ZRANGE", sp + "v", 0, -1, "WITHSCORES"),
        ]
        contexts, (formats, versions) = await self._read_contexts(
            failures, window, CONFLICT_LIMIT, deploys, needs_lineage
        )
        return SettleInputs(contexts, _formats(formats), _versions(versions))

    async def _read_contexts(
        self,
        failures: Sequence[PendingFailure],
        window: float,
        conflict_limit: int,
        extra: Sequence[Command] = (),
        needs_lineage: LineageNeed | None = None,
    ) -> tuple[list[FailureContext], list[Any]]:
        """The failures' contexts and the replies of `extra`, sent in the first round trip.

        The first round trip reads every record, conflicts and a short first stretch of each
        timeline; a walk that needs more reads on, only those, until each is done, unless
        `needs_lineage` says from the failure's record that it needs no lineage."""
        if not failures and not extra:
            return [], []
        skew = CLOCK_SKEW_SECONDS
        commands: list[Command] = list(extra)
        conflicts: list[Command] = []
        walks: list[Walk] = []
        timelines: list[str] = []
        conflicts_of: list[int] = []  # the failures whose conflicts are read
        for i, f in enumerate(failures):
            prefix = resource_prefix(f.service, f.resource_id)
            timelines.append(prefix + "z")
            commands.append(("HMGET", prefix + "e", f.request_id, DECISION + f.request_id))
            walk = Walk(
                f.ts, f.if_match, writes_limit=self.writes_cap, span_limit=SPAN_LIMIT, skew=skew
            )
            walks.append(walk)
            if f.client_id and walk.mode:  # what a blind retry can be
                conflicts_of.append(i)
                conflicts.append(
                    (
                        "ZREVRANGEBYSCORE",
                        prefix + "f",
                        repr(f.ts),
                        repr(f.ts - window),
                        "WITHSCORES",
                        "LIMIT",
                        0,
                        conflict_limit,
                    )
                )
        commands += conflicts
        walking = [i for i, walk in enumerate(walks) if not walk.done]
        reads: list[int] = []
        for i in walking:
            read, size = walks[i].more(timelines[i])
            commands.append(read)
            reads.append(size)
        replies = await self._commands("load_contexts", commands)
        extra_replies = replies[: len(extra)]
        records = replies[len(extra) : len(extra) + len(failures)]
        conflict_replies = replies[len(extra) + len(failures) : len(commands) - len(walking)]
        timeline_replies = replies[len(commands) - len(walking) :]
        found = [(decode_json(record), decode_json(decided)) for record, decided in records]

        asked: dict[int, bool] = {}  # what needs_lineage said, asked once per failure

        def reads_on(i: int) -> bool:
            if needs_lineage is None:
                return True
            if i not in asked:
                record, decided = found[i]
                # settling classifies neither a failure whose record is gone nor a decided one
                asked[i] = (
                    record is not None and decided is None and needs_lineage(failures[i], record)
                )
            return asked[i]

        while walking:
            again: list[int] = []
            commands, reads_again = [], []
            for i, reply, size in zip(walking, timeline_replies, reads, strict=True):
                walk = walks[i]
                walk.feed(*_members_and_scores(reply), size)
                if not walk.done and reads_on(i):
                    read, more = walk.more(timelines[i])
                    again.append(i)
                    commands.append(read)
                    reads_again.append(more)
            walking, reads = again, reads_again
            if walking:
                timeline_replies = await self._commands("load_contexts", commands)
        priors: dict[int, list[PriorFailure]] = {}
        for i, reply in zip(conflicts_of, conflict_replies, strict=True):
            mine = f"{US}{failures[i].client_id}{US}".encode()
            priors[i] = [decode_conflict(m, score) for m, score in _pairs(reply) if mine in m]
        contexts = []
        for i, (failure, walk, (record, decided)) in enumerate(
            zip(failures, walks, found, strict=True)
        ):
            lineage = [decode_sighting(m, score) for m, score in walk.kept.items()]
            lineage.sort(key=_by_time)
            contexts.append(FailureContext(failure, record, lineage, priors.get(i, []), decided))
        return contexts, extra_replies

    def _index_buckets(self, now: float) -> list[int]:
        """Index buckets that can still hold entries, newest first (a bucket lives `retention`
        from its start)."""
        newest = int(now // INDEX_BUCKET_SECONDS)
        expired = int((now - self.retention) // INDEX_BUCKET_SECONDS)
        return list(range(newest, expired, -1))

    async def _lookup_index(
        self, service: str, index: str, names: Sequence[str], now: float | None
    ) -> dict[str, str]:
        """Newest value of each name in a bucketed index (`q` or `x`) of a service."""
        if not names:
            return {}
        buckets = self._index_buckets(time.time() if now is None else now)
        names = list(names)
        found: dict[str, str] = {}
        # Chunks keep each HMGET within what Lua's unpack() takes.
        for start in range(0, len(names), MAX_EVENTS_PER_KEY):
            chunk = names[start : start + MAX_EVENTS_PER_KEY]
            key = service_prefix(service) + "p"
            lookup = ("EVALSHA", "lookup", 1, key, index, buckets[0], buckets[-1], RS.join(chunk))
            (values,) = await self._commands("lookup_index", [lookup], scripts=True)
            for name, value in zip(chunk, values, strict=True):
                if value is not None:  # b"": a failure that named no resource
                    found[name] = value.decode()
        return found

    async def etag_owners(
        self, service: str, etags: Iterable[str], now: float | None = None
    ) -> dict[str, str]:
        """Which resource of `service` last had each ETag, where one is known."""
        found = await self._lookup_index(service, "x", sorted(set(etags)), now)
        return {etag: owner for etag, owner in found.items() if owner}  # "": no resource named

    async def find_request(
        self, service: str, request_id: str, now: float | None = None
    ) -> str | None:
        """The resource a request was about, while it is retained."""
        return (await self._lookup_index(service, "q", [request_id], now)).get(request_id)

    async def record_decisions(
        self,
        decisions: Sequence[tuple[PendingFailure, dict[str, Any]]],
        *,
        gone: Sequence[bool] = (),
        count_as: Sequence[str] = (),
        tallies: Sequence[str] = (),
    ) -> list[bool]:
        """Store each claimed failure's decision unless one exists, then end its claim; True
        where this call ended the claim, which is when it is counted.

        A failure is counted by whichever call ends its claim (the first settler to get there:
        a claim ends once), in the service's per-minute counts (`minute_counts`) under its
        `count_as` name (default: its cause), which is what the deploy detector tells apart,
        and with its `tallies` entry (what counting it needs) kept for `take_counted`. The
        decision is stored first: a settler that dies in between leaves the claim to be taken
        over, and the next one counts it. A failure whose record was no longer stored (`gone`)
        is never counted, and its decision must not bring back its expired key without a TTL.
        """
        if not decisions:
            return []
        ttl = self.retention
        stores: list[Command] = []
        by_service: dict[str, list[int]] = {}
        for index, (failure, decision) in enumerate(decisions):
            key = records_key(failure.service, failure.resource_id)
            stores.append(("HSETNX", key, DECISION + failure.request_id, orjson.dumps(decision)))
            if index < len(gone) and gone[index]:
                stores.append(("EXPIRE", key, ttl))
            by_service.setdefault(failure.service, []).append(index)
        counts: list[Command] = []
        for service, indexes in by_service.items():
            args: list[Any] = [ttl]
            for index in indexes:
                failure, decision = decisions[index]
                counted = index >= len(gone) or not gone[index]
                name = count_as[index] if index < len(count_as) else None
                args += [failure.member, int(failure.ts // 60)]
                args.append((name or decision.get("cause", "unknown")) if counted else "")
                args.append(tallies[index] if counted and index < len(tallies) else "")
            counts.append(("EVALSHA", "count", 1, service_prefix(service) + "i", *args))
        if self.transport.single_node:  # one connection runs them in order
            replies = (await self._commands("record_decisions", stores + counts, scripts=True))[
                len(stores) :
            ]
        else:  # nodes run in parallel: the decisions must be stored before the claims end
            await self._commands("record_decisions", stores)
            replies = await self._commands("record_decisions", counts, scripts=True)
        ended = [False] * len(decisions)
        for indexes, flags in zip(by_service.values(), replies, strict=True):
            for index, flag in zip(indexes, flags, strict=True):
                ended[index] = bool(flag)
        return ended

    async def take_counted(
        self, services: Iterable[str], limit: int = 5000
    ) -> dict[str, list[bytes]]:
        """Take (and remove) up to `limit` per service of the decided failures waiting to be
        counted: each is handed to one caller only."""
        names = list(services)
        if not names:
            return {}
        pops = [("LPOP", service_prefix(service) + "k", limit) for service in names]
        replies = await self._commands("take_counted", pops)
        found = zip(names, replies, strict=True)
        return {service: list(entries) for service, entries in found if entries}

    async def minute_counts(
        self, service: str, first_minute: int, last_minute: int
    ) -> dict[int, dict[str, int]]:
        """Per-minute counts (`req`, `c:<cause>`) for minutes first..last inclusive."""
        sp = service_prefix(service)
        minutes = list(range(first_minute, last_minute + 1))
        reads = [("HGETALL", f"{sp}n:{minute}") for minute in minutes]
        out: dict[int, dict[str, int]] = {}
        for minute, raw in zip(minutes, await self._commands("minute_counts", reads), strict=True):
            if raw:
                out[minute] = {k.decode(): int(v) for k, v in _pairs(raw)}
        return out

    async def record_deploy(
        self, service: str, version: str, ts: float, now: float | None = None
    ) -> None:
        """A deploy marker: the version's deploy time is the marker's, not its first event."""
        now = time.time() if now is None else now
        sp = service_prefix(service)
        ttl = self.retention
        commands: list[Command] = [
            ("ZADD", sp + "v", repr(float(ts)), version),
            ("EXPIRE", sp + "v", ttl),
            ("HSETNX", sp + "d", version, orjson.dumps({"source": "marker"})),
            ("EXPIRE", sp + "d", ttl),
        ]
        commands += [
            ("ZADD", SERVICES_KEY, int(now * 1000), service),
            ("EXPIRE", SERVICES_KEY, ttl),
        ]
        await self._commands("record_deploy", commands)

    async def deploy_records(self, service: str) -> dict[str, dict[str, Any]]:
        """Per version: how it became known (`source`) and its regression verdict, if any."""
        sp = service_prefix(service)
        reads = [("HGETALL", sp + "d"), ("HGETALL", sp + "r")]
        sources, verdicts = await self._commands("deploy_records", reads)
        out: dict[str, dict[str, Any]] = {}
        for version, raw in _pairs(sources):
            out.setdefault(version.decode(), {}).update(orjson.loads(raw))
        for version, raw in _pairs(verdicts):
            out.setdefault(version.decode(), {})["regression"] = orjson.loads(raw)
        return out

    async def record_regression(self, service: str, version: str, verdict: dict[str, Any]) -> bool:
        """Record a deploy's first regression verdict; True if this call recorded it."""
        key = service_prefix(service) + "r"
        commands = [
            ("HSETNX", key, version, orjson.dumps(verdict)),
            ("EXPIRE", key, self.retention),
        ]
        first, _ = await self._commands("record_regression", commands)
        return bool(first)

    # -- queries ----------------------------------------------------------------------------

    async def services(self) -> list[str]:
        """Services seen within the retention, most recently active first."""
        return [s.decode() for s in await self._call("services", "ZREVRANGE", SERVICES_KEY, 0, -1)]

    async def backlog(self, services: Iterable[str]) -> Backlog:
        """Failures waiting for their watermark plus those being settled, and how far the
        oldest waiting one lags its service's newest event (event time)."""
        names = list(services)
        if not names:
            return Backlog(0, 0.0)
        reads: list[Command] = []
        for service in names:
            sp = service_prefix(service)
            reads += [
                ("ZCARD", sp + "p"),
                ("ZCARD", sp + "i"),
                ("ZRANGE", sp + "p", 0, 0, "WITHSCORES"),
                ("ZSCORE", sp + "m", "max"),
            ]
        replies = await self._commands("backlog", reads)
        count, lag = 0, 0.0
        for start in range(0, len(replies), 4):
            waiting, claimed, oldest, newest = replies[start : start + 4]
            count += int(waiting) + int(claimed)
            if oldest and newest is not None:
                lag = max(lag, float(newest) - float(_pairs(oldest)[0][1]))
        return Backlog(count, lag)

    async def watermark(self, service: str) -> float | None:
        """Newest event time seen for `service`, before lateness is taken off."""
        value = await self._call("watermark", "ZSCORE", service_prefix(service) + "m", "max")
        return None if value is None else float(value)

    async def request(
        self, service: str, resource_id: str, request_id: str
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The stored record of a request and its decision; either may be missing."""
        key = records_key(service, resource_id)
        rec, decision = await self._call("request", "HMGET", key, request_id, DECISION + request_id)
        return decode_json(rec), decode_json(decision)

    async def timeline(
        self, service: str, resource_id: str, *, limit: int = 200
    ) -> list[tuple[str, dict[str, Any], dict[str, Any] | None]]:
        """The newest `limit` events of a resource in event-time order, with decisions."""
        prefix = resource_prefix(service, resource_id)
        members = await self._call("timeline", "ZREVRANGE", prefix + "z", 0, limit - 1)
        ids = [request_of_member(member) for member in members]
        if not ids:
            return []
        ids.reverse()
        decisions = (DECISION + rid for rid in ids)
        values = await self._call("timeline", "HMGET", prefix + "e", *ids, *decisions)
        out = []
        for rid, rec, decision in zip(ids, values[: len(ids)], values[len(ids) :], strict=True):
            record = decode_json(rec)
            if record is not None:
                out.append((rid, record, decode_json(decision)))
        return out

    async def hot(
        self, service: str, *, since: float, until: float, limit: int = 10
    ) -> list[tuple[str, float]]:
        """Resources with the most conflicts between two event times, most first."""
        sp = service_prefix(service)
        minutes = range(int(since // 60), int(until // 60) + 1)
        reads = [("ZRANGE", f"{sp}h:{minute}", 0, -1, "WITHSCORES") for minute in minutes]
        totals: dict[str, float] = {}
        for bucket in await self._commands("hot", reads):
            for resource, count in _pairs(bucket):
                name = resource.decode()
                totals[name] = totals.get(name, 0.0) + float(count)
        return sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:limit]

    async def versions(self, service: str) -> list[tuple[str, float]]:
        """Deploy versions of a service with the event time each was first seen, oldest first."""
        versions = ("ZRANGE", service_prefix(service) + "v", 0, -1, "WITHSCORES")
        return _versions((await self._commands("versions", [versions]))[0])

    async def formats(self, service: str) -> dict[str, dict[str, float]]:
        """ETag fingerprints per version with the first event time each was seen."""
        formats = ("ZRANGE", service_prefix(service) + "f", 0, -1, "WITHSCORES")
        return _formats((await self._commands("formats", [formats]))[0])
