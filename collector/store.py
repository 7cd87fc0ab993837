"""Correlation state in Redis: ETag lineage, timelines, pending failures, dedupe and deploys.

The only module that imports `redis`. Keys of one resource share the hash tag
`{service:resource}` and keys of one service share `{service}`, so every multi-key script
touches one slot and the layout is valid on Redis Cluster. Every key gets a TTL of
`retention_seconds`, refreshed when written; the sets inside are trimmed by age or size.

Per resource, `pw:r:{s:r}:` + `e` hash request_id -> event record (JSON)
                                 `t` zset request_id by event time (the timeline)
                                 `w` zset write [request_id, etag, client] by event time (lineage)
                                 `d` zset request_id by receive time (dedupe)
                                 `c` hash request_id -> decision (JSON), set once
Per service,  `pw:s:{s}:`   + `p` zset pending failure by event time
                                 `i` zset claimed failure by lease expiry (in flight)
                                 `m` zset `max` = newest event time, `seen` = last receive time
                                 `v` zset deploy version by first event time
                                 `f` zset `version<US>fingerprint` by first event time
                                 `x:<etag>` string: resource that last had this ETag
                                 `q:<request_id>` string: resource of this request
Global        `pw:services` zset service by last receive time
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from collector.event import Event

SEP = "\x1f"  # never inside a stored field: event.py rejects control characters
SERVICES_KEY = "pw:services"


class StoreUnavailableError(Exception):
    """Redis cannot be reached or answered with an error; nothing was acknowledged."""


def _escape(text: str) -> str:
    # Braces would move the hash tag, colons would make two names collide.
    return text.replace("%", "%25").replace("{", "%7B").replace("}", "%7D").replace(":", "%3A")


def resource_prefix(service: str, resource_id: str) -> str:
    """Key prefix shared by every key of one resource."""
    return f"pw:r:{{{_escape(service)}:{_escape(resource_id)}}}:"


def service_prefix(service: str) -> str:
    """Key prefix shared by every key of one service."""
    return f"pw:s:{{{_escape(service)}}}:"


def _record(event: Event) -> bytes:
    """What the timeline keeps of an event: the canonical fields that are set, no raw body."""
    record: dict[str, object] = {"ts": event.ts, "status": event.status}
    for name in (
        "route",
        "method",
        "if_match",
        "if_none_match",
        "current_etag",
        "client_id",
        "deploy_version",
        "reason",
    ):
        value = getattr(event, name)
        if value is not None:
            record[name] = value
    return orjson.dumps(record)


_INGEST = """
-- KEYS: 5 per resource (e, t, d, w, c). ARGV: now_ms, ttl, timeline_cap, writes_cap, then per
-- resource: n, then n x (request_id, ts, is_failure, write_member, record).
-- Returns one code per event: 0 stored, 1 duplicate, 2 duplicate of an undecided failure.
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local tcap = tonumber(ARGV[3])
local wcap = tonumber(ARGV[4])
local out = {}
local a = 5
for r = 0, #KEYS / 5 - 1 do
  local e, t, d, w, c = KEYS[r*5+1], KEYS[r*5+2], KEYS[r*5+3], KEYS[r*5+4], KEYS[r*5+5]
  local n = tonumber(ARGV[a])
  a = a + 1
  for _ = 1, n do
    local rid, ts, failure, wmember, rec = ARGV[a], ARGV[a+1], ARGV[a+2], ARGV[a+3], ARGV[a+4]
    a = a + 5
    if redis.call('ZSCORE', d, rid) then
      if failure == '1' and redis.call('HEXISTS', c, rid) == 0 then
        out[#out+1] = 2
      else
        out[#out+1] = 1
      end
    else
      redis.call('ZADD', d, now, rid)
      redis.call('HSET', e, rid, rec)
      redis.call('ZADD', t, ts, rid)
      if wmember ~= '' then redis.call('ZADD', w, ts, wmember) end
      out[#out+1] = 0
    end
  end
  redis.call('ZREMRANGEBYSCORE', d, '-inf', now - ttl * 1000)
  local extra = redis.call('ZCARD', t) - tcap
  while extra > 0 do
    local chunk = math.min(extra, 1000)
    local old = redis.call('ZRANGE', t, 0, chunk - 1)
    redis.call('ZREMRANGEBYRANK', t, 0, chunk - 1)
    redis.call('HDEL', e, unpack(old))
    redis.call('HDEL', c, unpack(old))
    extra = extra - chunk
  end
  redis.call('ZREMRANGEBYRANK', w, 0, -(wcap + 1))
  redis.call('EXPIRE', e, ttl)
  redis.call('EXPIRE', t, ttl)
  redis.call('EXPIRE', d, ttl)
  if redis.call('EXISTS', w) == 1 then redis.call('EXPIRE', w, ttl) end
  if redis.call('EXISTS', c) == 1 then redis.call('EXPIRE', c, ttl) end
end
return out
"""

_CLAIM = """
-- KEYS: p, m, i. ARGV: now_ms, lateness_s, idle_s, lease_ms, limit, force, ttl.
-- Moves failures the watermark has passed from pending to in-flight, and re-leases in-flight
-- ones whose settler vanished. Returns members, due ones first, then re-leased ones.
local p, m, i = KEYS[1], KEYS[2], KEYS[3]
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[5])
local lease_until = now + tonumber(ARGV[4])
local out = {}
local newest = redis.call('ZSCORE', m, 'max')
if newest then
  local bound = tostring(tonumber(newest) - tonumber(ARGV[2]))
  local seen = tonumber(redis.call('ZSCORE', m, 'seen') or '0')
  if ARGV[6] == '1' or now - seen >= tonumber(ARGV[3]) * 1000 then bound = '+inf' end
  local due = redis.call('ZRANGEBYSCORE', p, '-inf', bound, 'LIMIT', 0, limit)
  for _, member in ipairs(due) do
    redis.call('ZREM', p, member)
    redis.call('ZADD', i, lease_until, member)
    out[#out+1] = member
  end
end
local lost = redis.call('ZRANGEBYSCORE', i, '-inf', now, 'LIMIT', 0, limit)
for _, member in ipairs(lost) do
  redis.call('ZADD', i, lease_until, member)
  out[#out+1] = member
end
if #out > 0 then redis.call('EXPIRE', i, tonumber(ARGV[7])) end
return out
"""

_SNAPSHOT = """
-- KEYS: e, t, w, c. ARGV: request_id, ts, window_s, limit.
-- The failure's record, the resource's lineage, and its events in the window before it.
local rec = redis.call('HGET', KEYS[1], ARGV[1])
local writes = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
local since = tonumber(ARGV[2]) - tonumber(ARGV[3])
local ids = redis.call('ZREVRANGEBYSCORE', KEYS[2], ARGV[2], since, 'LIMIT', 0, tonumber(ARGV[4]))
local recent = {}
if #ids > 0 then recent = redis.call('HMGET', KEYS[1], unpack(ids)) end
local decided = redis.call('HGET', KEYS[4], ARGV[1])
return {rec or '', writes, ids, recent, decided or ''}
"""


@dataclass(frozen=True, slots=True)
class Write:
    """A 2xx write that made `etag` the resource's current ETag at `ts`."""

    ts: float
    request_id: str
    etag: str
    client_id: str | None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as the timeline keeps it."""

    request_id: str
    record: dict[str, Any]

    @property
    def ts(self) -> float:
        return float(self.record["ts"])


@dataclass(frozen=True, slots=True)
class PendingFailure:
    """A failure claimed for settling."""

    service: str
    resource_id: str
    request_id: str

    @property
    def member(self) -> str:
        return f"{self.resource_id}{SEP}{self.request_id}"


@dataclass(slots=True)
class FailureContext:
    """Everything the classifier may look at for one failure, read in one round trip."""

    failure: PendingFailure
    record: dict[str, Any] | None
    writes: list[Write]
    recent: list[StoredEvent]
    already_decided: bool
    etag_owners: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What storing a batch did: per event, stored (True) or duplicate (False)."""

    stored: list[bool]


def _write_member(event: Event) -> str:
    return orjson.dumps([event.request_id, event.current_etag, event.client_id]).decode()


class Store:
    """Async access to the correlation state; raises StoreUnavailableError on Redis faults."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        retention_seconds: int,
        timeline_max_events: int = 2000,
        lineage_max_writes: int = 500,
        embedded: bool = False,
    ) -> None:
        # Typed as Any: redis-py annotates replies as unions of every RESP shape; this class
        # knows each command's reply and decodes it where it reads it.
        self.client: Any = client
        self.retention = retention_seconds
        self.timeline_cap = timeline_max_events
        self.writes_cap = lineage_max_writes
        self.embedded = embedded
        self._scripts: dict[str, str] = {}

    @classmethod
    def from_url(cls, url: str | None, **options: Any) -> Store:
        """A store on `url`, or on an in-process fakeredis when `url` is None."""
        if url is None:
            import fakeredis  # the embedded default; production sets PW_REDIS_URL

            client: aioredis.Redis = fakeredis.FakeAsyncRedis()
            return cls(client, embedded=True, **options)
        client = aioredis.Redis.from_url(
            url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30
        )
        return cls(client, **options)

    async def close(self) -> None:
        await self.client.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError):
            return False

    async def _eval(self, name: str, source: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        sha = self._scripts.get(name)
        try:
            if sha is not None:
                try:
                    return await self.client.evalsha(sha, len(keys), *keys, *args)
                except NoScriptError:
                    pass  # Redis restarted or flushed its script cache
            sha = await self.client.script_load(source)
            self._scripts[name] = sha
            return await self.client.evalsha(sha, len(keys), *keys, *args)
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(str(exc)) from exc

    async def _execute(self, commands: Iterable[tuple[str, Sequence[Any]]]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for name, args in commands:
            pipe.execute_command(name, *args)
        try:
            return list(await pipe.execute())
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(str(exc)) from exc

    async def _scripts_ready(self) -> None:
        if self._scripts:
            return
        try:
            for name, source in (("ingest", _INGEST), ("claim", _CLAIM), ("snapshot", _SNAPSHOT)):
                self._scripts[name] = await self.client.script_load(source)
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(str(exc)) from exc

    # -- ingest -----------------------------------------------------------------------------

    async def ingest(
        self,
        events: Sequence[Event],
        now: float | None = None,
        *,
        formats: Sequence[tuple[str, str, str, float]] = (),
    ) -> IngestResult:
        """Store a batch: dedupe, timelines, lineage, then pending failures and indexes.

        Events are stored by the first step; a failure that stored but never reached the
        pending set is re-queued when the shipper retries, so a fault between the two steps
        loses nothing.
        """
        if not events:
            return IngestResult([])
        now = time.time() if now is None else now
        now_ms = int(now * 1000)
        by_resource: dict[tuple[str, str], list[int]] = {}
        for index, event in enumerate(events):
            by_resource.setdefault((event.service, event.resource_id), []).append(index)

        keys: list[str] = []
        args: list[Any] = [now_ms, self.retention, self.timeline_cap, self.writes_cap]
        order: list[int] = []
        for (service, resource), indexes in by_resource.items():
            prefix = resource_prefix(service, resource)
            keys += [prefix + "e", prefix + "t", prefix + "d", prefix + "w", prefix + "c"]
            args.append(len(indexes))
            for index in indexes:
                event = events[index]
                args += [
                    event.request_id,
                    repr(event.ts),
                    "1" if event.is_failure else "0",
                    _write_member(event) if event.is_write else "",
                    _record(event),
                ]
                order.append(index)
        await self._scripts_ready()
        codes = await self._eval("ingest", _INGEST, keys, args)
        stored = [False] * len(events)
        requeue = [False] * len(events)
        for index, code in zip(order, codes, strict=True):
            stored[index] = code == 0
            requeue[index] = code == 2
        commands = self._service_commands(events, stored, requeue, now)
        commands += self._format_commands(formats)
        await self._execute(commands)
        return IngestResult(stored)

    def _service_commands(
        self, events: Sequence[Event], stored: list[bool], requeue: list[bool], now: float
    ) -> list[tuple[str, Sequence[Any]]]:
        ttl = self.retention
        now_ms = int(now * 1000)
        commands: list[tuple[str, Sequence[Any]]] = []
        newest: dict[str, float] = {}
        for event, is_new, again in zip(events, stored, requeue, strict=True):
            if not (is_new or again):
                continue
            sp = service_prefix(event.service)
            newest[event.service] = max(newest.get(event.service, 0.0), event.ts)
            if event.is_failure:
                member = f"{event.resource_id}{SEP}{event.request_id}"
                commands.append(("ZADD", (sp + "p", "NX", repr(event.ts), member)))
            if not is_new:
                continue
            commands.append(("SET", (sp + "q:" + event.request_id, event.resource_id, "EX", ttl)))
            if event.deploy_version:
                commands.append(("ZADD", (sp + "v", "LT", repr(event.ts), event.deploy_version)))
            if event.is_write and event.current_etag:
                commands.append(
                    ("SET", (sp + "x:" + event.current_etag, event.resource_id, "EX", ttl))
                )
        for service, ts in newest.items():
            sp = service_prefix(service)
            commands += [
                ("ZADD", (sp + "m", "GT", repr(ts), "max")),
                ("ZADD", (sp + "m", now_ms, "seen")),
                ("EXPIRE", (sp + "m", ttl)),
                ("EXPIRE", (sp + "p", ttl)),
                ("EXPIRE", (sp + "v", ttl)),
                ("ZADD", (SERVICES_KEY, now_ms, service)),
            ]
        if newest:
            commands += [
                ("ZREMRANGEBYSCORE", (SERVICES_KEY, "-inf", now_ms - ttl * 1000)),
                ("EXPIRE", (SERVICES_KEY, ttl)),
            ]
        return commands

    def _format_commands(
        self, formats: Iterable[tuple[str, str, str, float]]
    ) -> list[tuple[str, Sequence[Any]]]:
        """Remember (service, version, fingerprint) with the first event time it was seen."""
        commands: list[tuple[str, Sequence[Any]]] = []
        for service, version, fingerprint, ts in formats:
            sp = service_prefix(service)
            member = f"{version}{SEP}{fingerprint}"
            commands += [
                ("ZADD", (sp + "f", "LT", repr(ts), member)),
                ("EXPIRE", (sp + "f", self.retention)),
            ]
        return commands

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
        sp = service_prefix(service)
        members = await self._eval(
            "claim",
            _CLAIM,
            [sp + "p", sp + "m", sp + "i"],
            [
                int(now * 1000),
                lateness,
                lateness,
                int(lease_seconds * 1000),
                limit,
                "1" if force else "0",
                self.retention,
            ],
        )
        claimed = []
        for raw in members:
            resource, _, request_id = raw.decode().partition(SEP)
            claimed.append(PendingFailure(service, resource, request_id))
        return claimed

    async def load_contexts(
        self, failures: Sequence[PendingFailure], *, window: float, recent_limit: int = 200
    ) -> list[FailureContext]:
        """Read each failure's record, lineage and recent events, pipelined in one round trip."""
        if not failures:
            return []
        await self._scripts_ready()
        pipe = self.client.pipeline(transaction=False)
        for failure in failures:
            prefix = resource_prefix(failure.service, failure.resource_id)
            pipe.hget(prefix + "e", failure.request_id)
        try:
            heads = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(str(exc)) from exc
        pipe = self.client.pipeline(transaction=False)
        for failure, head in zip(failures, heads, strict=True):
            prefix = resource_prefix(failure.service, failure.resource_id)
            ts = orjson.loads(head)["ts"] if head else 0.0
            pipe.evalsha(
                self._scripts["snapshot"],
                4,
                prefix + "e",
                prefix + "t",
                prefix + "w",
                prefix + "c",
                failure.request_id,
                repr(ts),
                window,
                recent_limit,
            )
        try:
            replies = await pipe.execute()
        except NoScriptError:
            self._scripts.clear()
            return await self.load_contexts(failures, window=window, recent_limit=recent_limit)
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(str(exc)) from exc
        contexts = []
        for failure, (rec, writes_raw, ids, recent_raw, decided) in zip(
            failures, replies, strict=True
        ):
            writes = []
            for member, score in zip(writes_raw[::2], writes_raw[1::2], strict=True):
                request_id, etag, client = orjson.loads(member)
                writes.append(Write(float(score), request_id, etag, client))
            recent = [
                StoredEvent(rid.decode(), orjson.loads(raw))
                for rid, raw in zip(ids, recent_raw, strict=True)
                if raw
            ]
            contexts.append(
                FailureContext(
                    failure=failure,
                    record=orjson.loads(rec) if rec else None,
                    writes=writes,
                    recent=recent,
                    already_decided=bool(decided),
                )
            )
        return contexts

    async def etag_owners(self, service: str, etags: Iterable[str]) -> dict[str, str]:
        """Which resource of `service` last had each ETag, where one is known."""
        wanted = sorted(set(etags))
        if not wanted:
            return {}
        sp = service_prefix(service)
        try:
            values = await self.client.mget([sp + "x:" + etag for etag in wanted])
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(str(exc)) from exc
        return {etag: v.decode() for etag, v in zip(wanted, values, strict=True) if v is not None}

    async def record_decisions(
        self, decisions: Sequence[tuple[PendingFailure, dict[str, Any]]]
    ) -> list[bool]:
        """Store each decision unless one exists; True where this call made it (count it)."""
        if not decisions:
            return []
        commands: list[tuple[str, Sequence[Any]]] = []
        for failure, decision in decisions:
            prefix = resource_prefix(failure.service, failure.resource_id)
            commands.append(("HSETNX", (prefix + "c", failure.request_id, orjson.dumps(decision))))
            commands.append(("EXPIRE", (prefix + "c", self.retention)))
        replies = await self._execute(commands)
        release = [("ZREM", (service_prefix(f.service) + "i", f.member)) for f, _ in decisions]
        await self._execute(release)
        return [bool(r) for r in replies[::2]]

    # -- queries ----------------------------------------------------------------------------

    async def services(self) -> list[str]:
        """Services seen within the retention, most recently active first."""
        try:
            raw = await self.client.zrevrange(SERVICES_KEY, 0, -1)
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(str(exc)) from exc
        return [s.decode() for s in raw]

    async def pending_count(self, services: Iterable[str]) -> int:
        """Failures waiting for their watermark, plus those being settled."""
        commands: list[tuple[str, Sequence[Any]]] = []
        for service in services:
            sp = service_prefix(service)
            commands += [("ZCARD", (sp + "p",)), ("ZCARD", (sp + "i",))]
        return sum(int(n) for n in await self._execute(commands)) if commands else 0

    async def watermark(self, service: str) -> float | None:
        """Newest event time seen for `service`, before lateness is taken off."""
        try:
            value = await self.client.zscore(service_prefix(service) + "m", "max")
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(str(exc)) from exc
        return None if value is None else float(value)

    async def find_request(self, service: str, request_id: str) -> str | None:
        """The resource a request was about, when it is still retained."""
        try:
            value = await self.client.get(service_prefix(service) + "q:" + request_id)
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(str(exc)) from exc
        return None if value is None else value.decode()

    async def request(
        self, service: str, resource_id: str, request_id: str
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The stored record of a request and its decision, either may be missing."""
        prefix = resource_prefix(service, resource_id)
        rec, decision = await self._execute(
            [("HGET", (prefix + "e", request_id)), ("HGET", (prefix + "c", request_id))]
        )
        return (
            orjson.loads(rec) if rec else None,
            orjson.loads(decision) if decision else None,
        )

    async def timeline(
        self, service: str, resource_id: str, *, limit: int = 200
    ) -> list[tuple[str, dict[str, Any], dict[str, Any] | None]]:
        """The newest `limit` events of a resource in event-time order, with decisions."""
        prefix = resource_prefix(service, resource_id)
        try:
            ids = await self.client.zrevrange(prefix + "t", 0, limit - 1)
            if not ids:
                return []
            ids.reverse()
            pipe = self.client.pipeline(transaction=False)
            pipe.hmget(prefix + "e", ids)
            pipe.hmget(prefix + "c", ids)
            records, decisions = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(str(exc)) from exc
        out = []
        for rid, rec, decision in zip(ids, records, decisions, strict=True):
            if rec:
                out.append(
                    (rid.decode(), orjson.loads(rec), orjson.loads(decision) if decision else None)
                )
        return out

    async def versions(self, service: str) -> list[tuple[str, float]]:
        """Deploy versions of a service with the event time each was first seen, oldest first."""
        try:
            raw = await self.client.zrange(service_prefix(service) + "v", 0, -1, withscores=True)
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(str(exc)) from exc
        return [(v.decode(), float(ts)) for v, ts in raw]

    async def formats(self, service: str) -> dict[str, dict[str, float]]:
        """ETag fingerprints per version with the first event time each was seen."""
        try:
            raw = await self.client.zrange(service_prefix(service) + "f", 0, -1, withscores=True)
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(str(exc)) from exc
        out: dict[str, dict[str, float]] = {}
        for member, ts in raw:
            version, _, fingerprint = member.decode().partition(SEP)
            out.setdefault(version, {})[fingerprint] = float(ts)
        return out
