"""Correlation state in Redis: ETag lineage, timelines, pending failures, dedupe and deploys.

The only module that imports `redis`. Keys of one resource share the hash tag
`{service:resource}` and keys of one service share `{service}`. A batch's events are written
with plain commands sent together: HSETNX of each record (the dedupe), ZADD NX of the timeline
and conflict members, then one script call that gives every key its TTL back. Each is
idempotent, so a retried batch changes nothing that is already there and repairs what its
first attempt did not reach. A second round trip then writes what the newly stored events add
to their service: pending failures, indexes, counts. The per-service scripts take one
service's keys; the TTL, trim and settling scripts take the resources of a whole batch in one
call, which a standalone Redis (or one primary) accepts; on Redis Cluster they would have to
be called once per slot, which this store does not do yet. Every key has a TTL of at most
`retention_seconds`, refreshed when written; the sets inside are capped.

Per resource, `pw:r:{s:r}:`  + `e` hash request_id -> event record (JSON); an id already in it
                                     is a duplicate; `c:<request_id>` -> decision (JSON), set once
                                 `z` zset of every event by event time (the timeline), member
                                     `kind US request_id US etag US client US if_match US
                                     version` for lineage evidence (`w` a 2xx write, `d` a 2xx
                                     DELETE, `f` a failure with a current ETag; see
                                     `lineage_member`), `o US request_id` for the rest
                                 `f` zset 412/409 with If-Match by event time, member
                                     `request_id US status US client US if_match`
Per service,  `pw:s:{s}:`   + `p` zset pending failure `ts US resource US request_id US if_match US
                                     client` by ts
                                 `i` zset claimed (in-flight) failure by lease expiry
                                 `m` zset `max` = newest event time, `seen` = last receive time
                                 `v` zset deploy version by first event time
                                 `f` zset `version US fingerprint` by first event time
                                 `q:<bucket>` hash request_id -> resource, failures only
                                     (the request lookup)
                                 `x:<bucket>` hash etag -> resource (who had this ETag)
                                 `h:<minute>` zset resource by conflicts in that minute
                                 `n:<minute>` hash `req` and `c:<cause>` counts (event time)
                                 `d` hash version -> how the deploy became known (marker)
                                 `r` hash version -> regression verdict (JSON), set once
                                 `k` list decided failures not yet counted in any replica's
                                     metrics (settle.py's `encode_counted`)
Global        `pw:services` zset service by last receive time

Index buckets are 15 minutes of receive time and expire `retention` after their start.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import hiredis
import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from collector.classify import CLOCK_SKEW_SECONDS, PriorFailure, Sighting
from collector.etag import parse_precondition
from collector.event import FAILURE_STATUSES, Event
from collector.settings import Settings

US = "\x1f"  # never inside a stored field: event.py rejects control characters
# A record's field `+<request_id>` says the event was indexed: its service state is written.
INDEXED = "+"
RS = "\x1e"
SERVICES_KEY = "pw:services"
INDEX_BUCKET_SECONDS = 900
# Lua's unpack() is bounded by the C stack; the Python side cuts argument lists to this.
MAX_EVENTS_PER_KEY = 1000
# The 412/409s a failure's snapshot returns at most: enough to see a blind retry loop.
CONFLICT_LIMIT = 200
# A claim this old is stuck (settling one takes milliseconds): a flush takes it over.
STUCK_CLAIM_SECONDS = 2.0
# Sightings since the newest write a snapshot returns at most: enough to see replicas flip.
SPAN_LIMIT = 32


class StoreUnavailableError(Exception):
    """Redis cannot be reached or answered with an error; nothing was acknowledged."""


def _escape(text: str) -> str:
    # Braces would move the hash tag, colons would make two names collide.
    if "%" not in text and "{" not in text and "}" not in text and ":" not in text:
        return text
    return text.replace("%", "%25").replace("{", "%7B").replace("}", "%7D").replace(":", "%3A")


def resource_prefix(service: str, resource_id: str) -> str:
    """Key prefix shared by every key of one resource."""
    return f"pw:r:{{{_escape(service)}:{_escape(resource_id)}}}:"


def service_prefix(service: str) -> str:
    """Key prefix shared by every key of one service."""
    return f"pw:s:{{{_escape(service)}}}:"


def _record(event: Event) -> str:
    """What the timeline keeps of an event: the canonical fields that are set, no raw body."""
    record: dict[str, object] = {"ts": event.ts, "status": event.status}
    # Spelled out: a getattr() loop costs a third more on every event.
    if event.route is not None:
        record["route"] = event.route
    if event.method is not None:
        record["method"] = event.method
    if event.if_match is not None:
        record["if_match"] = event.if_match
    if event.if_none_match is not None:
        record["if_none_match"] = event.if_none_match
    if event.current_etag is not None:
        record["current_etag"] = event.current_etag
    if event.client_id is not None:
        record["client_id"] = event.client_id
    if event.deploy_version is not None:
        record["deploy_version"] = event.deploy_version
    if event.reason is not None:
        record["reason"] = event.reason
    # As str: keeping orjson's bytes instead raised peak RSS in `make bench` from 90 to 120 MiB.
    return orjson.dumps(record).decode()


# Scripts get one declared key per resource (its `e`) or service (its `p`) and derive the
# sibling keys by suffix: they share the hash tag, so they live in the same cluster slot.
# Items travel as blob arguments (RS between items, US between fields): encoding a few large
# arguments costs a fraction of encoding thousands of small ones. A batch's records and
# members are plain commands: in Redis 7.0 a script costs more per call it makes than the
# plain command would; the TTLs are the exception, cheaper to pack as one call's keys.
_LIB = """
local RS, US = string.char(30), string.char(31)
local function split(s, sep)
  -- gmatch walks the string in C; a find/sub loop in Lua costs several times more
  local out = {}
  if s == nil or s == '' then return out end
  for item in string.gmatch(s .. sep, '([^' .. sep .. ']*)' .. sep) do out[#out+1] = item end
  return out
end
"""

_EXPIRE = """
-- KEYS: every key a batch wrote. ARGV: ttl. Gives each its TTL back: one call instead of an
-- EXPIRE per key, whose packing cost the collector more than running them costs Redis.
for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[1]) end
return #KEYS
"""

_TRIM = """
-- KEYS: the `e` key of each resource a batch touched. ARGV: timeline_cap.
-- Cuts each timeline (and its records, index flags and decisions) and conflicts set to the
-- cap.
local US = string.char(31)
local tcap = tonumber(ARGV[1])
for r = 1, #KEYS do
  local e = KEYS[r]
  local z, f = string.sub(e, 1, -2) .. 'z', string.sub(e, 1, -2) .. 'f'
  redis.call('ZREMRANGEBYRANK', f, 0, -(tcap + 1))
  local extra = redis.call('ZCARD', z) - tcap
  while extra > 0 do
    local chunk = math.min(extra, 1000)
    local old = redis.call('ZRANGE', z, 0, chunk - 1)
    redis.call('ZREMRANGEBYRANK', z, 0, chunk - 1)
    local gone = {}
    for _, member in ipairs(old) do
      local rid = string.match(member, '^.' .. US .. '([^' .. US .. ']*)')
      gone[#gone+1] = rid; gone[#gone+1] = 'c:' .. rid; gone[#gone+1] = '+' .. rid
    end
    redis.call('HDEL', e, unpack(gone))
    extra = extra - chunk
  end
end
return 1
"""

_CLAIM = """
-- KEYS: p. ARGV: now_ms, lateness_s, idle_s, lease_ms, limit, force, ttl, stuck_ms.
-- Moves failures the watermark has passed from pending to in-flight, and re-leases in-flight
-- ones whose settler vanished (and, when forced, stuck ones). Returns members, due ones first,
-- then re-leased ones.
local base = string.sub(KEYS[1], 1, -2)
local p, m, i = KEYS[1], base .. 'm', base .. 'i'
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
  for _, member in ipairs(due) do out[#out+1] = member end
end
-- forced (a flush), also those claimed more than stuck_ms ago: a claim is settled in
-- milliseconds, so its settler died with Redis or is gone, and deciding twice is harmless
-- (the first decision is kept, and counted once)
local lost_until = now
if ARGV[6] == '1' then lost_until = now + tonumber(ARGV[4]) - tonumber(ARGV[8]) end
local lost = redis.call('ZRANGEBYSCORE', i, '-inf', lost_until, 'LIMIT', 0, limit)
for _, member in ipairs(lost) do out[#out+1] = member end
-- one ZREM and one ZADD for the lot (chunks keep unpack() within its limit)
for start = 1, #out, 500 do
  local stop = math.min(start + 499, #out)
  local leases = {}
  for j = start, stop do leases[#leases+1] = lease_until; leases[#leases+1] = out[j] end
  redis.call('ZREM', p, unpack(out, start, stop))
  redis.call('ZADD', i, unpack(leases))
end
if #out > 0 then redis.call('EXPIRE', i, tonumber(ARGV[7])) end
return out
"""

_SNAPSHOT = (
    _LIB
    + """
-- KEYS: the `e` key of each failure's resource. ARGV: window_s, writes_limit, conflict_limit,
-- span_limit, skew_s, then per failure request_id, ts, client and its If-Match needles: '' (no tag:
-- nothing to look up), 'a' (every sighting) or 'n' followed by opaque tags (RS before each).
-- Per failure: {record or '', decided (0/1), sightings, conflicts}. Walking the timeline's
-- lineage members (w, d, f) newest first from the failure's time, `sightings` keeps the writes
-- stamped up to `skew_s` after it (another instance's clock may put the write the failure saw
-- there), those
-- containing a needle with the sighting just after each, and the newest `span_limit` back to
-- the newest write (member, score pairs): all the classifier reads of the lineage. The walk
-- stops once each needle was found whole, as an ETag (`"x"` or `W/"x"`) or in a write's
-- If-Match, and the span is read, or after `writes_limit` writes: older sightings cannot be
-- the newest of that tag. `conflicts` are the client's own 412/409s with If-Match among the
-- newest `conflict_limit` of the resource's in the window before the failure: what a blind
-- retry can be.
local window, wlimit, climit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local slimit, skew = tonumber(ARGV[4]), tonumber(ARGV[5])
local out = {}
for k = 1, #KEYS do
  local e = KEYS[k]
  local z = string.sub(e, 1, -2) .. 'z'
  local j = 4 * k + 2
  local rid, ts, client, needles = ARGV[j], ARGV[j + 1], ARGV[j + 2], ARGV[j + 3]
  local values = redis.call('HMGET', e, rid, 'c:' .. rid)
  local kept, conflicts = {}, {}
  if client ~= '' and needles ~= '' then
    local f = string.sub(e, 1, -2) .. 'f'
    local since = tostring(tonumber(ts) - window)
    local mine = US .. client .. US
    -- without scores: only the few members kept need theirs
    local window_members = redis.call('ZREVRANGEBYSCORE', f, ts, since, 'LIMIT', 0, climit)
    for _, member in ipairs(window_members) do
      if string.find(member, mine, 1, true) then
        conflicts[#conflicts+1] = member; conflicts[#conflicts+1] = redis.call('ZSCORE', f, member)
      end
    end
  end
  local mode = string.sub(needles, 1, 1)
  local wanted, left = {}, 0
  if mode == 'n' then
    for _, needle in ipairs(split(string.sub(needles, 3), RS)) do
      wanted[needle] = true; left = left + 1
    end
  end
  local added, order = {}, {}
  local function keep(member)
    if not added[member] then added[member] = true; order[#order+1] = member end
  end
  local writes, walked, prev, offset, size = 0, 0, nil, 0, 16
  local in_span = true
  local walking = mode ~= ''
  if walking then
    -- writes stamped a little after the failure: one the failure saw may be among them
    local ahead = '(' .. ts
    for _, member in ipairs(redis.call('ZRANGEBYSCORE', z, ahead, tonumber(ts) + skew)) do
      if string.sub(member, 1, 1) == 'w' then keep(member) end
    end
  end
  while walking do
    -- most If-Match tags are among the newest sightings: read a little first, more if needed
    local chunk = redis.call('ZREVRANGEBYSCORE', z, ts, '-inf', 'LIMIT', offset, size)
    for _, member in ipairs(chunk) do
      local kind = string.sub(member, 1, 1)
      if kind ~= 'o' then
        walked = walked + 1
        if in_span then
          keep(member)
          if kind ~= 'f' or walked >= slimit then in_span = false end
        end
        local match = mode == 'a'
        local fields = nil
        for needle, _ in pairs(wanted) do
          if string.find(member, needle, 3, true) then
            match = true
            fields = fields or split(member, US)
            local etag, quoted = fields[3], '"' .. needle .. '"'
            local superseded = kind ~= 'f' and string.find(fields[5] or '', quoted, 1, true)
            if etag == quoted or etag == 'W/' .. quoted or superseded then
              wanted[needle] = nil; left = left - 1
            end
          end
        end
        if match then
          -- the newer neighbour is what came after this sighting: the classifier needs it too
          if prev then keep(prev) end
          keep(member)
        end
        prev = member
        if kind ~= 'f' then writes = writes + 1 end
        if writes >= wlimit or walked >= 4 * wlimit
            or (mode == 'n' and left == 0 and not in_span) then
          walking = false
          break
        end
      end
    end
    if #chunk < size then break end
    offset = offset + size
    size = math.min(size * 4, 256)
  end
  local scored = {}
  for _, member in ipairs(order) do
    scored[#scored+1] = member; scored[#scored+1] = redis.call('ZSCORE', z, member)
  end
  out[k] = {values[1] or '', values[2] and 1 or 0, scored, conflicts}
end
return out
"""
)

_DECIDE = """
-- KEYS: the service's `i` key, then the `e` key of each failure. ARGV: ttl, then per failure
-- request_id, decision, pending member, '1' where the resource's record was gone (its key may
-- be too: HSETNX would create it without a TTL), event-time minute and count name (its cause
-- as the deploy detector tells causes apart) and tally entry. Sets each decision unless one
-- exists, ends the lease, and adds each decision it set (for a record still there) to the
-- service's per-minute counts, which the deploy detector reads, and its tally entry to the
-- service's `k` list, which a serving process drains into its metrics.
-- Returns 1 where this call set the decision.
local base = string.sub(KEYS[1], 1, -2)
local ttl = tonumber(ARGV[1])
local out, done, counts, tallies = {}, {}, {}, {}
for k = 2, #KEYS do
  local j = 7 * (k - 2) + 1
  out[k - 1] = redis.call('HSETNX', KEYS[k], 'c:' .. ARGV[j + 1], ARGV[j + 2])
  if ARGV[j + 4] == '1' then
    redis.call('EXPIRE', KEYS[k], ttl)
  elseif out[k - 1] == 1 then
    local n = base .. 'n:' .. ARGV[j + 5]
    local field = 'c:' .. ARGV[j + 6]
    counts[n] = counts[n] or {}
    counts[n][field] = (counts[n][field] or 0) + 1
    if ARGV[j + 7] ~= '' then tallies[#tallies+1] = ARGV[j + 7] end
  end
  done[#done+1] = ARGV[j + 3]
end
for i = 1, #done, 1000 do
  redis.call('ZREM', KEYS[1], unpack(done, i, math.min(i + 999, #done)))
end
for n, fields in pairs(counts) do
  for field, count in pairs(fields) do redis.call('HINCRBY', n, field, count) end
  redis.call('EXPIRE', n, ttl)
end
for i = 1, #tallies, 1000 do
  redis.call('RPUSH', base .. 'k', unpack(tallies, i, math.min(i + 999, #tallies)))
end
if #tallies > 0 then redis.call('EXPIRE', base .. 'k', ttl) end
return out
"""

_LOOKUP = (
    _LIB
    + """
-- KEYS: the service's `p` key. ARGV: index (`q` or `x`), newest bucket, oldest bucket, names
-- blob (RS between names). Returns the newest value of each name (false where none), searching
-- buckets newest first and stopping once every name is found.
local base = string.sub(KEYS[1], 1, -2)
local names = split(ARGV[4], RS)
local found, missing = {}, #names
for bucket = tonumber(ARGV[2]), tonumber(ARGV[3]), -1 do
  if missing == 0 then break end
  local key = base .. ARGV[1] .. ':' .. bucket
  if redis.call('EXISTS', key) == 1 then
    local values = redis.call('HMGET', key, unpack(names))
    for i = 1, #names do
      if not found[i] and values[i] then
        found[i] = values[i]
        missing = missing - 1
      end
    end
  end
end
local out = {}
for i = 1, #names do out[i] = found[i] or false end
return out
"""
)

_SCRIPTS = {
    "expire": _EXPIRE,
    "trim": _TRIM,
    "claim": _CLAIM,
    "snapshot": _SNAPSHOT,
    "decide": _DECIDE,
    "lookup": _LOOKUP,
}


@dataclass(slots=True)
class PendingFailure:
    """A failure waiting to be (or being) settled; `if_match` and `client_id` say what of its
    resource's timeline settling must read."""

    service: str
    resource_id: str
    request_id: str
    ts: float
    if_match: str = ""
    client_id: str = ""

    @property
    def member(self) -> str:
        return US.join(
            (repr(self.ts), self.resource_id, self.request_id, self.if_match, self.client_id)
        )


@dataclass(slots=True)
class FailureContext:
    """Everything the store knows around one failure, read in one round trip."""

    failure: PendingFailure
    record: dict[str, Any] | None
    lineage: list[Sighting]
    prior_conflicts: list[PriorFailure]
    already_decided: bool


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
            ts = repr(e.ts)
            client = e.client_id or ""
            pending += (
                ts,
                f"{ts}{US}{e.resource_id}{US}{e.request_id}{US}{e.if_match or ''}{US}{client}",
            )
    if pending:
        commands.append(("ZADD", sp + "p", "NX", *pending))
    if versions:
        first = [x for version, ts in versions.items() for x in (repr(ts), version)]
        commands += [("ZADD", sp + "v", "LT", *first), ("EXPIRE", sp + "v", ttl)]
    if formats:
        seen = [x for version, fp, ts in formats for x in (repr(ts), f"{version}{US}{fp}")]
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


def lineage_member(event: Event) -> str:
    """An event's timeline member: what it shows of the resource's ETag lineage (a `Sighting`,
    decoded by `decode_sighting`), or `o US request_id` when it shows nothing."""
    status = event.status
    if 200 <= status < 300:
        kind = "d" if event.method == "DELETE" else "w"
    elif event.current_etag and status in FAILURE_STATUSES:
        kind = "f"
    else:
        return f"o{US}{event.request_id}"
    if_match = event.if_match if kind != "f" and event.if_match else ""
    return US.join(
        (
            kind,
            event.request_id,
            event.current_etag or "",
            event.client_id or "",
            if_match,
            event.deploy_version or "",
        )
    )


def decode_sighting(member: bytes, score: Any) -> Sighting:
    """The `Sighting` a `lineage_member` encodes, at its timeline score."""
    kind, request_id, etag, client, if_match, version = member.decode().split(US)
    return Sighting(float(score), request_id, kind, etag, client or None, if_match, version)


def _conflict_member(event: Event) -> str:
    """A 412/409 with If-Match as the conflicts set keeps it (see the module docstring)."""
    return f"{event.request_id}{US}{event.status}{US}{event.client_id or ''}{US}{event.if_match}"


def _contexts(failures: Sequence[PendingFailure], replies: list[Any]) -> list[FailureContext]:
    """The snapshot script's answer, one FailureContext per failure."""
    contexts = []
    for failure, (rec, decided, sightings_raw, prior_raw) in zip(failures, replies, strict=True):
        lineage = sorted(
            (
                decode_sighting(member, score)
                for member, score in zip(sightings_raw[::2], sightings_raw[1::2], strict=True)
            ),
            key=lambda sighting: sighting.ts,
        )
        prior = []
        for member, score in zip(prior_raw[::2], prior_raw[1::2], strict=True):
            request_id, status, client, if_match = member.decode().split(US, 3)
            prior.append(
                PriorFailure(float(score), request_id, int(status), client or None, if_match)
            )
        contexts.append(FailureContext(failure, _decode(rec), lineage, prior, bool(decided)))
    return contexts


def _scored(reply: list[Any]) -> list[tuple[bytes, Any]]:
    """ZRANGE WITHSCORES as (member, score): flat from hiredis, already paired by redis-py."""
    if reply and isinstance(reply[0], list | tuple):
        return [(member, score) for member, score in reply]
    return list(zip(reply[::2], reply[1::2], strict=True))


def _versions(reply: list[Any]) -> list[tuple[str, float]]:
    """ZRANGE WITHSCORES of `v`: (version, first event time), oldest first."""
    return [(v.decode(), float(ts)) for v, ts in _scored(reply)]


def _formats(reply: list[Any]) -> dict[str, dict[str, float]]:
    """ZRANGE WITHSCORES of `f`: {version: {fingerprint: first event time}}."""
    out: dict[str, dict[str, float]] = {}
    for member, ts in _scored(reply):
        version, _, fingerprint = member.decode().partition(US)
        out.setdefault(version, {})[fingerprint] = float(ts)
    return out


def _needles(if_match: str) -> str:
    """What the snapshot script looks for in the lineage: the opaque part of each tag."""
    tags = parse_precondition(if_match).tags if if_match else ()
    if not tags:
        return ""
    if any(not tag.opaque for tag in tags):
        return "a"  # an empty opaque is in every ETag
    return "n" + "".join(RS + tag.opaque for tag in tags)


def _decode(value: bytes | None) -> dict[str, Any] | None:
    return orjson.loads(value) if value else None


class _PackInC:
    """Connection mixin: RESP-encode commands with hiredis instead of redis-py's Python loop,
    which copies its growing buffer once per argument (a batch script has hundreds)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        name = args[0].encode() if isinstance(args[0], str) else args[0]
        if b" " in name:  # "SCRIPT LOAD": the server wants the words as separate arguments
            args = (*name.split(), *args[1:])
        return [hiredis.pack_command(args)]


class _BulkConnection:
    """One connection that takes many plain commands in one write and reads every reply with
    hiredis in C."""

    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        options = self._options
        if options.get("path"):
            reader, writer = await asyncio.open_unix_connection(options["path"])
        else:
            reader, writer = await asyncio.open_connection(
                options.get("host", "localhost"), options.get("port", 6379)
            )
        self._reader, self._writer = reader, writer
        setup: list[tuple[Any, ...]] = []
        password, user = options.get("password"), options.get("username")
        if password:
            setup.append(("AUTH", user, password) if user else ("AUTH", password))
        if options.get("db"):
            setup.append(("SELECT", options["db"]))
        if setup:
            try:
                _check(await self._exchange(setup))
            except StoreUnavailableError:
                self.close()  # not authenticated: never use this connection
                raise

    async def _exchange(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        assert self._reader is not None and self._writer is not None
        self._writer.write(b"".join([hiredis.pack_command(c) for c in commands]))
        await self._writer.drain()
        parser = hiredis.Reader()
        replies: list[Any] = []
        while len(replies) < len(commands):
            data = await self._reader.read(1 << 16)
            if not data:
                raise ConnectionError("Redis closed the connection")
            parser.feed(data)
            reply = parser.gets()
            while reply is not False:
                replies.append(reply)
                reply = parser.gets()
        return replies

    async def run(self, commands: Sequence[tuple[Any, ...]], timeout: float) -> list[Any]:
        """Every reply, error replies included: each was read, so the connection stays usable."""
        if self._reader is not None and self._reader.at_eof():
            self.close()  # Redis closed it while it sat idle (a restart): never send on it
        try:
            if self._writer is None:
                async with asyncio.timeout(timeout):  # not wait_for: see Settler.run
                    await self._connect()
            async with asyncio.timeout(timeout):
                return await self._exchange(commands)
        except (OSError, TimeoutError, hiredis.ProtocolError) as exc:
            self.close()  # replies may be half read: start over on a new connection
            raise StoreUnavailableError(str(exc) or type(exc).__name__) from exc

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


# What an error reply is, from hiredis or redis-py: a tuple made once, as every reply of a
# batch is checked against it.
_ERRORS = (hiredis.ReplyError, RedisError)


def _check(replies: list[Any]) -> list[Any]:
    """The replies, unless one is an error."""
    for reply in replies:
        if isinstance(reply, _ERRORS):
            raise StoreUnavailableError(f"Redis answered: {reply}")
    return replies


def _is_noscript(reply: Any) -> bool:
    return isinstance(reply, NoScriptError) or (
        isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT")
    )


class _Bulk:
    """Plain commands by the thousand, bypassing redis-py's pipeline.

    redis-py reads a pipeline's replies with one await each, which costs the collector more
    than Redis spends running a small command, and a batch sends a command per event. Plain
    TCP and Unix sockets only: TLS and the embedded fakeredis go through redis-py's pipeline.
    A few connections let batches overlap; each carries one batch at a time.
    """

    def __init__(self, options: dict[str, Any], size: int = 4, timeout: float = 5.0) -> None:
        self._timeout = timeout
        self._idle: asyncio.Queue[_BulkConnection] = asyncio.Queue()
        self._all = [_BulkConnection(options) for _ in range(size)]
        for connection in self._all:
            self._idle.put_nowait(connection)

    async def run(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        connection = await self._idle.get()
        try:
            return await connection.run(commands, self._timeout)
        finally:
            self._idle.put_nowait(connection)

    def close(self) -> None:
        for connection in self._all:
            connection.close()


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
    ) -> None:
        # Typed as Any: redis-py annotates replies as unions of every RESP shape; this class
        # knows each command's reply and decodes it where it reads it.
        self.client: Any = client
        self.retention = retention_seconds
        self.timeline_cap = timeline_max_events
        self.writes_cap = lineage_max_writes
        self.embedded = embedded
        self._shas: dict[str, str] = {}
        self._batches = 0
        self._bulk: _Bulk | None = None
        # Called with (operation, seconds, failed) after every round trip: Redis latency metrics.
        self.observer = observer

    @classmethod
    def from_url(cls, url: str | None, **options: Any) -> Store:
        """A store on `url`, or on an in-process fakeredis when `url` is None."""
        timeout = options.pop("timeout", 5.0)
        if url is None:
            import fakeredis  # the embedded default; production sets PW_REDIS_URL

            return cls(fakeredis.FakeAsyncRedis(), embedded=True, **options)
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
            (_PackInC, pool.connection_class),
            {},
        )
        store = cls(client, **options)
        if plain:
            store._bulk = _Bulk(pool.connection_kwargs, timeout=timeout)
        return store

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        """The store every collector process opens: PW_REDIS_URL with the configured caps."""
        return cls.from_url(
            settings.redis_url,
            retention_seconds=settings.retention_seconds,
            timeline_max_events=settings.timeline_max_events,
            lineage_max_writes=settings.lineage_max_writes,
            timeout=settings.redis_timeout_seconds,
        )

    async def close(self) -> None:
        if self._bulk is not None:
            self._bulk.close()
        await self.client.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError):
            return False

    # -- plumbing ---------------------------------------------------------------------------

    async def _load_scripts(self) -> None:
        """Load the scripts unless loaded; raises RedisError."""
        if not self._shas:
            # Filled aside and swapped in whole: a concurrent batch must never see half the names.
            shas = {name: await self.client.script_load(s) for name, s in _SCRIPTS.items()}
            self._shas = shas

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

    async def _pipeline(self, build: Any) -> list[Any]:
        """Run the plain commands `build(pipe)` queues on a redis-py pipeline."""
        with self._observed(build.__qualname__.split(".")[1].lstrip("_")):  # the method's name
            try:
                pipe = self.client.pipeline(transaction=False)
                build(pipe)
                return list(await pipe.execute())
            except (RedisError, OSError) as exc:
                raise StoreUnavailableError(str(exc) or type(exc).__name__) from exc

    async def _call(self, name: str, *args: Any) -> Any:
        def build(pipe: Any) -> None:
            pipe.execute_command(name, *args)

        return (await self._pipeline(build))[0]

    async def _send(
        self, commands: Sequence[tuple[Any, ...]], *, atomic: bool = False
    ) -> list[Any]:
        """Every reply, an error reply as a value: by `_Bulk` when it can, else by redis-py.

        With `atomic`, the commands run as one MULTI/EXEC transaction: all of them or, if Redis
        dies first, none (its AOF drops a transaction it did not finish writing)."""
        if self._bulk is not None:
            if not atomic:
                return await self._bulk.run(commands)
            replies = await self._bulk.run([("MULTI",), *commands, ("EXEC",)])
            queued, done = replies[1:-1], replies[-1]
            errors = [reply for reply in queued if isinstance(reply, _ERRORS)]
            if errors or not isinstance(done, list):
                return [*errors, done] if errors else [done]
            return done
        pipe = self.client.pipeline(transaction=atomic)
        for command in commands:
            pipe.execute_command(*command)
        return list(await pipe.execute(raise_on_error=False))

    async def _commands(
        self,
        operation: str,
        commands: Sequence[tuple[Any, ...]],
        *,
        scripts: bool = False,
        atomic: bool = False,
    ) -> list[Any]:
        """Commands in one round trip; raises StoreUnavailableError if any failed.

        With `scripts`, a command may call one of this module's scripts by name,
        `("EVALSHA", "claim", numkeys, ...)`; the name is swapped for its SHA here. If Redis
        forgot the scripts (a restart), they are loaded again and only the script calls are
        sent again: the plain commands beside them already ran, and running an HSETNX twice
        would turn a new event into a duplicate. With `atomic` (plain commands only), they
        run as one transaction.
        """

        def resolved(batch: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
            shas = self._shas
            return [(c[0], shas[c[1]], *c[2:]) if c[0] == "EVALSHA" else c for c in batch]

        with self._observed(operation):
            try:
                if not scripts:
                    return _check(await self._send(commands, atomic=atomic))
                await self._load_scripts()
                replies = await self._send(resolved(commands))
                lost = [
                    i
                    for i, reply in enumerate(replies)
                    if isinstance(reply, _ERRORS) and _is_noscript(reply)
                ]
                if lost:
                    self._shas = {}
                    await self._load_scripts()
                    again = await self._send(resolved([commands[i] for i in lost]))
                    for i, reply in zip(lost, again, strict=True):
                        replies[i] = reply
                return _check(replies)
            except (RedisError, OSError) as exc:
                raise StoreUnavailableError(str(exc) or type(exc).__name__) from exc

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
                commands.append(("HSETNX", e, event.request_id, _record(event)))
                ts = repr(event.ts)
                timeline += (ts, lineage_member(event))
                if event.status in (409, 412) and event.if_match:
                    conflicts += (ts, _conflict_member(event))
            commands.append(tuple(timeline))
            written += (e, prefix + "z")
            if len(conflicts) > 3:
                commands.append(tuple(conflicts))
                written.append(prefix + "f")
        commands.append(("EVALSHA", "expire", len(written), *written, ttl))
        replies = await self._commands("ingest", commands, scripts=True)
        recorded = [bool(replies[at]) for at in record_reply]
        fresh = await self._unindexed(events, recorded)

        self._batches += 1
        # Trimming costs a few calls per resource; every 32nd batch keeps the caps close
        # (a resource overshoots by at most its events of 31 batches) at a fraction of that.
        if self._batches % 32 == 1:
            trim = ("EVALSHA", "trim", len(record_keys), *record_keys, self.timeline_cap)
            await self._commands("trim", [trim], scripts=True)
        await self._store_service_state(events, fresh, now, formats)
        return IngestResult(fresh)

    async def _unindexed(self, events: Sequence[Event], recorded: list[bool]) -> list[bool]:
        """Which events this batch must index: the ones it recorded, and duplicates whose
        first copy was recorded but never indexed (that attempt died between its two round
        trips, and the shipper is retrying it)."""
        fresh = list(recorded)
        retried = [i for i, is_new in enumerate(recorded) if not is_new]
        if retried:
            checks = [
                (
                    "HEXISTS",
                    resource_prefix(events[i].service, events[i].resource_id) + "e",
                    INDEXED + events[i].request_id,
                )
                for i in retried
            ]
            flags = await self._commands("ingest", checks)
            for index, indexed in zip(retried, flags, strict=True):
                fresh[index] = not indexed
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
        is indexed whole or not at all, so a retry can tell which events to index again."""
        new: dict[str, list[Event]] = {}
        flags: dict[str, list[str]] = {}
        for event, is_fresh in zip(events, fresh, strict=True):
            if is_fresh:
                new.setdefault(event.service, []).append(event)
                e = resource_prefix(event.service, event.resource_id) + "e"
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
        commands += [("HSET", e, *fields) for e, fields in flags.items()]
        await self._commands("store_service_state", commands, atomic=True)

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
        claimed = []
        for raw in members:
            ts, resource, request_id, if_match, client = raw.decode().split(US)
            claimed.append(
                PendingFailure(service, resource, request_id, float(ts), if_match, client)
            )
        return claimed

    async def load_contexts(
        self,
        failures: Sequence[PendingFailure],
        *,
        window: float,
        conflict_limit: int = CONFLICT_LIMIT,
    ) -> list[FailureContext]:
        """Each failure's record, the lineage its If-Match needs, and the 412/409s in the
        window before it: one script call for the whole batch."""
        if not failures:
            return []
        snapshot = self._snapshot(failures, window, conflict_limit)
        (replies,) = await self._commands("load_contexts", [snapshot], scripts=True)
        return _contexts(failures, replies)

    async def settle_inputs(
        self, service: str, failures: Sequence[PendingFailure], *, window: float
    ) -> SettleInputs:
        """`load_contexts` of a claimed batch with its service's `formats` and `versions`, in
        one round trip."""
        sp = service_prefix(service)
        commands = [
            ("ZRANGE", sp + "f", 0, -1, "WITHSCORES"),
            ("ZRANGE", sp + "v", 0, -1, "WITHSCORES"),
        ]
        if failures:
            commands.append(self._snapshot(failures, window, CONFLICT_LIMIT))
        formats, versions, *snapshot = await self._commands("load_contexts", commands, scripts=True)
        contexts = _contexts(failures, snapshot[0]) if failures else []
        return SettleInputs(contexts, _formats(formats), _versions(versions))

    def _snapshot(
        self, failures: Sequence[PendingFailure], window: float, conflict_limit: int
    ) -> tuple[Any, ...]:
        keys = [resource_prefix(f.service, f.resource_id) + "e" for f in failures]
        args: list[Any] = [window, self.writes_cap, conflict_limit, SPAN_LIMIT]
        args.append(CLOCK_SKEW_SECONDS)
        for failure in failures:
            args += [failure.request_id, repr(failure.ts), failure.client_id]
            args.append(_needles(failure.if_match))
        return ("EVALSHA", "snapshot", len(keys), *keys, *args)

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
        """Store each decision unless one exists; True where this call made it (count it).

        Each decision it made for a record still stored is added to the service's per-minute
        counts (`minute_counts`), in the same round trip, under its `count_as` name (default:
        its cause), which is what the deploy detector tells apart; and its `tallies` entry
        (what counting it needs) is kept for `take_counted`, in the same script: a decision
        is never kept without what counts it, nor counted twice.

        `gone` marks failures whose record was no longer stored: their resource's key may have
        expired, and the decision must not bring it back without a TTL.
        """
        if not decisions:
            return []
        by_service: dict[str, list[int]] = {}
        for index, (failure, _) in enumerate(decisions):
            by_service.setdefault(failure.service, []).append(index)
        calls: list[tuple[Any, ...]] = []
        for service, indexes in by_service.items():
            keys = [service_prefix(service) + "i"]
            args: list[Any] = [self.retention]
            for index in indexes:
                failure, decision = decisions[index]
                keys.append(resource_prefix(service, failure.resource_id) + "e")
                args += [failure.request_id, orjson.dumps(decision), failure.member]
                args.append("1" if index < len(gone) and gone[index] else "0")
                counted = count_as[index] if index < len(count_as) else None
                args += [int(failure.ts // 60), counted or decision.get("cause", "unknown")]
                args.append(tallies[index] if index < len(tallies) else "")
            calls.append(("EVALSHA", "decide", len(keys), *keys, *args))

        kept = [False] * len(decisions)
        replies = await self._commands("record_decisions", calls, scripts=True)
        for indexes, flags in zip(by_service.values(), replies, strict=True):
            for index, flag in zip(indexes, flags, strict=True):
                kept[index] = bool(flag)
        return kept

    async def take_counted(
        self, services: Iterable[str], limit: int = 5000
    ) -> dict[str, list[bytes]]:
        """Take (and remove) up to `limit` per service of the decided failures waiting to be
        counted: each is handed to one caller only."""
        names = list(services)
        if not names:
            return {}

        def build(pipe: Any) -> None:
            for service in names:
                pipe.lpop(service_prefix(service) + "k", limit)

        replies = await self._pipeline(build)
        found = zip(names, replies, strict=True)
        return {service: list(entries) for service, entries in found if entries}

    async def minute_counts(
        self, service: str, first_minute: int, last_minute: int
    ) -> dict[int, dict[str, int]]:
        """Per-minute counts (`req`, `c:<cause>`) for minutes first..last inclusive."""
        sp = service_prefix(service)
        minutes = list(range(first_minute, last_minute + 1))

        def build(pipe: Any) -> None:
            for minute in minutes:
                pipe.hgetall(f"{sp}n:{minute}")

        out: dict[int, dict[str, int]] = {}
        for minute, raw in zip(minutes, await self._pipeline(build), strict=True):
            if raw:
                out[minute] = {k.decode(): int(v) for k, v in raw.items()}
        return out

    async def record_deploy(
        self, service: str, version: str, ts: float, now: float | None = None
    ) -> None:
        """A deploy marker: the version's deploy time is the marker's, not its first event."""
        now = time.time() if now is None else now
        sp = service_prefix(service)
        now_ms = int(now * 1000)

        def build(pipe: Any) -> None:
            pipe.zadd(sp + "v", {version: ts})
            pipe.expire(sp + "v", self.retention)
            pipe.hsetnx(sp + "d", version, orjson.dumps({"source": "marker"}))
            pipe.expire(sp + "d", self.retention)
            pipe.zadd(SERVICES_KEY, {service: now_ms})
            pipe.expire(SERVICES_KEY, self.retention)

        await self._pipeline(build)

    async def deploy_records(self, service: str) -> dict[str, dict[str, Any]]:
        """Per version: how it became known (`source`) and its regression verdict, if any."""
        sp = service_prefix(service)

        def build(pipe: Any) -> None:
            pipe.hgetall(sp + "d")
            pipe.hgetall(sp + "r")

        sources, verdicts = await self._pipeline(build)
        out: dict[str, dict[str, Any]] = {}
        for version, raw in sources.items():
            out.setdefault(version.decode(), {}).update(orjson.loads(raw))
        for version, raw in verdicts.items():
            out.setdefault(version.decode(), {})["regression"] = orjson.loads(raw)
        return out

    async def record_regression(self, service: str, version: str, verdict: dict[str, Any]) -> bool:
        """Record a deploy's first regression verdict; True if this call recorded it."""
        key = service_prefix(service) + "r"

        def build(pipe: Any) -> None:
            pipe.hsetnx(key, version, orjson.dumps(verdict))
            pipe.expire(key, self.retention)

        first, _ = await self._pipeline(build)
        return bool(first)

    # -- queries ----------------------------------------------------------------------------

    async def services(self) -> list[str]:
        """Services seen within the retention, most recently active first."""
        return [s.decode() for s in await self._call("ZREVRANGE", SERVICES_KEY, 0, -1)]

    async def backlog(self, services: Iterable[str]) -> Backlog:
        """Failures waiting for their watermark plus those being settled, and how far the
        oldest waiting one lags its service's newest event (event time)."""
        names = list(services)
        if not names:
            return Backlog(0, 0.0)

        def build(pipe: Any) -> None:
            for service in names:
                sp = service_prefix(service)
                pipe.zcard(sp + "p")
                pipe.zcard(sp + "i")
                pipe.zrange(sp + "p", 0, 0, withscores=True)
                pipe.zscore(sp + "m", "max")

        replies = await self._pipeline(build)
        count, lag = 0, 0.0
        for start in range(0, len(replies), 4):
            waiting, claimed, oldest, newest = replies[start : start + 4]
            count += int(waiting) + int(claimed)
            if oldest and newest is not None:
                lag = max(lag, float(newest) - float(oldest[0][1]))
        return Backlog(count, lag)

    async def watermark(self, service: str) -> float | None:
        """Newest event time seen for `service`, before lateness is taken off."""
        value = await self._call("ZSCORE", service_prefix(service) + "m", "max")
        return None if value is None else float(value)

    async def request(
        self, service: str, resource_id: str, request_id: str
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The stored record of a request and its decision; either may be missing."""
        key = resource_prefix(service, resource_id) + "e"
        rec, decision = await self._call("HMGET", key, request_id, "c:" + request_id)
        return _decode(rec), _decode(decision)

    async def timeline(
        self, service: str, resource_id: str, *, limit: int = 200
    ) -> list[tuple[str, dict[str, Any], dict[str, Any] | None]]:
        """The newest `limit` events of a resource in event-time order, with decisions."""
        prefix = resource_prefix(service, resource_id)
        members = await self._call("ZREVRANGE", prefix + "z", 0, limit - 1)
        ids = [member.decode().split(US, 2)[1] for member in members]
        if not ids:
            return []
        ids.reverse()
        values = await self._call("HMGET", prefix + "e", *ids, *("c:" + rid for rid in ids))
        out = []
        for rid, rec, decision in zip(ids, values[: len(ids)], values[len(ids) :], strict=True):
            record = _decode(rec)
            if record is not None:
                out.append((rid, record, _decode(decision)))
        return out

    async def hot(
        self, service: str, *, since: float, until: float, limit: int = 10
    ) -> list[tuple[str, float]]:
        """Resources with the most conflicts between two event times, most first."""
        sp = service_prefix(service)
        minutes = range(int(since // 60), int(until // 60) + 1)

        def build(pipe: Any) -> None:
            for minute in minutes:
                pipe.zrange(f"{sp}h:{minute}", 0, -1, withscores=True)

        totals: dict[str, float] = {}
        for bucket in await self._pipeline(build):
            for resource, count in bucket:
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
