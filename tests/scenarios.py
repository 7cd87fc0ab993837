"""Labelled test streams from a simulated world: what happened to each request, not a rule's view.

`tests/scenarios.py` is the second traffic generator, written from DESIGN.md alone and kept apart
from the collector's own demo: it never imports the classifier, the deploy detector or the demo,
and it labels nothing with their rules. Each scenario is a small discrete-event simulation of
one service: resources with a true state (how many writes they have had), replicas and deploys
that turn a state into an ETag, and clients that read (unlogged), think, and write with the ETag
they hold. The server compares If-Match strongly, as RFC 9110 says, against the ETag that the
replica and version answering right now compute; only writes and failures are logged.

A failure's `truth_cause` is what made the client's ETag useless, taken from the simulation's
own record of the request (`_World._explain`):

- the origin emits weak ETags on that resource: `weak_etag`;
- an intermediary rewrote the ETag on its way to the client: `proxy_rewrite`;
- the ETag still described the current state, but a deploy changed how ETags are computed
  before any write replaced that state: `format_change`;
- the ETag describes the current state under the current computation, but another replica
  computes a different one for it: `unstable_etag`;
- the same client already got a 412 for this resource with this If-Match within W:
  `blind_retry`;
- a write replaced the state the ETag describes: `concurrent_write` if that write was at most W
  before the failure, `stale_etag` if longer ago (whatever the deploy did later: the token was
  dead already);
- the ETag was read from a different resource: `cross_resource`;
- `If-Match: *` on a resource that no longer exists: `resource_gone`; `If-None-Match: *` on one
  that exists: `create_conflict`; no precondition where one is required (428):
  `missing_precondition`; a 409 for a state conflict: `business_conflict`.

Where two of these hold at once, DESIGN's precedence picks (missing_precondition,
business_conflict, resource_gone, create_conflict, weak_etag, proxy_rewrite, format_change,
unstable_etag, blind_retry, concurrent_write, cross_resource, stale_etag, unknown), so a client
behind a rewriting proxy that refetches and gets the same rewritten ETag again is
`proxy_rewrite`, not `blind_retry`. The one `unknown` is a route whose log line carries neither
If-Match nor the current ETag: the world knows it was a race, but the event holds no validator
to tell, and DESIGN's last answer for "not enough evidence" is `unknown`.

Where the world would be genuinely ambiguous to anyone reading the log, the simulation steers
away (`_World._hazard`): a client never saves within `EDGE` seconds of a window edge (W after the
write that superseded its ETag, W after its own previous 412 with the same If-Match), and no
request is answered within `DEPLOY_GAP` seconds of a deploy; a client whose race winner was never
logged (the missing hour of `billing`) gives up instead of saving; and after a deploy that
changes the ETag's shape, a client whose token had already been superseded before the deploy
gives up too (its old-format If-Match would point at the deploy, its history at the race). A
scenario that breaks these rules anyway is a bug here and raises `SteeringError`.

`generate()` returns the scenarios in true event-time order, `deliver()` turns them into what a
shipper sends (late and duplicated lines), `truth()` maps `(service, request_id)` to the cause.
Besides `truth_cause`, a `concurrent_write` or `stale_etag` failure carries
`truth_superseded_at`, the event time of the write that replaced the state its If-Match
describes; the collector ignores both, as it ignores every unknown field.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
import uuid
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field, replace

WINDOW = 300.0  # DESIGN's W, PW_CONCURRENCY_WINDOW_SECONDS at its default
EDGE = 1.5  # no failure this close to a W edge (the tests want > 1 s)
DEPLOY_GAP = 1.5  # no request this close to a deploy instant: which version answered is clear

CAUSES = (
    "missing_precondition",
    "business_conflict",
    "resource_gone",
    "create_conflict",
    "weak_etag",
    "proxy_rewrite",
    "format_change",
    "unstable_etag",
    "blind_retry",
    "concurrent_write",
    "cross_resource",
    "stale_etag",
    "unknown",
)

FAILURE_STATUSES = frozenset({409, 412, 428})


@dataclass(frozen=True)
class DeployTruth:
    """A deploy in a stream and whether a detector must flag it (`format_change`) or not (None)."""

    service: str
    version: str
    ts: float  # event time the new version started answering
    regression_cause: str | None  # "format_change" if it must be flagged, else None


@dataclass(frozen=True)
class Scenario:
    """One service's labelled stream: its events in true event-time order and its deploys.

    A (service, version) that is not in `deploys` (a version answering from the stream's start)
    is no deploy at all and must never be flagged either.
    """

    name: str
    events: list[dict[str, object]]
    deploys: list[DeployTruth]


class SteeringError(RuntimeError):
    """A scenario produced a failure whose true cause no log reader could tell: a bug here."""


# --- ETag computations ------------------------------------------------------------------------

ComputeEtag = Callable[[str, int, int, float], str]  # (resource, state, replica, mtime) -> ETag


@dataclass(frozen=True)
class _Scheme:
    """How one version computes ETags. `shape` is what the value looks like to a reader."""

    name: str
    shape: str
    compute: ComputeEtag


def _md5(*parts: object) -> str:
    return hashlib.md5("|".join(map(str, parts)).encode(), usedforsecurity=False).hexdigest()


def _body_hash(salt: str) -> _Scheme:
    """`"<32 hex>"`: md5 of the serialised body; the salt stands for the serialiser's quirks."""

    def compute(rid: str, state: int, replica: int, mtime: float) -> str:
        return f'"{_md5(salt, rid, state)}"'

    return _Scheme(f"md5/{salt}", "hex32", compute)


def _prefixed_hash(salt: str) -> _Scheme:
    """`"v2-<16 hex>"`: a new ETag format."""

    def compute(rid: str, state: int, replica: int, mtime: float) -> str:
        return f'"v2-{_md5(salt, rid, state)[:16]}"'

    return _Scheme(f"v2/{salt}", "v2-hex16", compute)


def _inode() -> _Scheme:
    """`"<inode>-<size>-<mtime>"` as a file server derives it: each replica has its own inode."""

    def compute(rid: str, state: int, replica: int, mtime: float) -> str:
        inode = int(_md5("inode", rid, replica)[:6], 16) | 0x1000000
        size = 512 + int(_md5("size", rid, state)[:4], 16)
        return f'"{inode:x}-{size:x}-{int(mtime * 1_000_000):x}"'

    return _Scheme("inode", "inode-size-mtime", compute)


# What intermediaries do to an ETag on its way to the client (the request goes back verbatim).
_PROXIES: dict[str, Callable[[str], str]] = {
    "gzip": lambda etag: etag[:-1] + '-gzip"',  # Apache DeflateAlterETag
    "br": lambda etag: etag[:-1] + '-br"',
    "weaken": lambda etag: "W/" + etag,  # nginx gzip on a strong ETag
    "unquote": lambda etag: etag.strip('"'),
}


def _strong_match(a: str, b: str) -> bool:
    """RFC 9110 strong comparison: both strong and the same opaque value."""
    return a == b and not a.startswith("W/")


# --- the world --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    """An ETag a client holds and where it came from."""

    value: str  # as the client holds it and sends it back in If-Match
    resource: str
    state: int
    scheme: str
    replica: int
    proxy: str | None
    read_at: float


@dataclass
class _Resource:
    rid: str
    route: str
    state: int
    alive: bool
    weak: bool = False
    born: dict[int, float] = field(default_factory=dict)  # state -> when it was written
    superseded: dict[int, float] = field(default_factory=dict)  # state -> when it was replaced
    superseded_logged: dict[int, bool] = field(default_factory=dict)
    superseding_im: dict[int, str | None] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)  # ETags the log has shown for this resource


@dataclass(frozen=True)
class _Outcome:
    ok: bool
    token: _Token | None = None  # for a success: what the client now holds


@dataclass(frozen=True)
class _Deploy:
    ts: float
    version: str
    scheme: _Scheme | None  # None: same computation as before (a no-op for ETags)
    regression_cause: str | None


Script = Generator[float, None, None]
Op = Generator[float, None, _Outcome | None]

_ABANDON = math.inf


class _World:
    """One service: its resources, replicas and deploys, the clients' scripts, and its log.

    Scripts are generators that yield the event time they want to run next; the world runs
    them in time order and logs what the service answered, so events come out sorted.
    """

    def __init__(
        self,
        service: str,
        *,
        seed: int,
        version: str,
        scheme: _Scheme,
        end: float,
        replicas: int = 1,
        log_from: float = -math.inf,
    ) -> None:
        self.service = service
        self.rng = random.Random(f"{seed}/{service}")
        self.now = -math.inf
        self.version = version
        self.scheme = scheme
        self.replicas = replicas
        self.log_from = log_from
        self.end = end  # the log ends here: what clients would do later never happens
        self.resources: dict[str, _Resource] = {}
        self.events: list[dict[str, object]] = []
        self._schemes = {scheme.name: scheme}
        self._first_scheme = scheme.name
        self._deploys: list[_Deploy] = []
        self._queue: list[tuple[float, int, Script]] = []
        self._seq = 0
        # (client, resource, IM) -> (time of the last 412, whether it was logged)
        self._failed: dict[tuple[str, str, str], tuple[float, bool]] = {}
        self._request_ids: set[str] = set()

    # building

    def populate(
        self,
        prefix: str,
        count: int,
        *,
        route: str,
        quiet_since: float,
        states: tuple[int, int] = (2, 40),
        weak: bool = False,
    ) -> list[str]:
        """Resources met mid-life: at some state n, last written before `quiet_since`."""
        ids = []
        for i in range(count):
            rid = f"{prefix}-{i:05d}"
            state = self.rng.randint(*states)
            res = _Resource(rid, route, state, alive=True, weak=weak)
            t = quiet_since - self.rng.uniform(0, 3 * 86400)
            for n in range(state, -1, -1):
                res.born[n] = t
                if n > 0:
                    res.superseded[n - 1] = t
                    res.superseded_logged[n - 1] = False
                    res.superseding_im[n - 1] = None
                t -= self.rng.uniform(600, 4 * 86400)
            self.resources[rid] = res
            ids.append(rid)
        return ids

    def deploy(
        self, ts: float, version: str, scheme: _Scheme | None, regression: str | None
    ) -> None:
        """Plan a deploy: from `ts` on, `version` answers, computing ETags with `scheme`."""
        self._deploys.append(_Deploy(ts, version, scheme, regression))
        self._deploys.sort(key=lambda d: d.ts)
        if scheme is not None:
            self._schemes[scheme.name] = scheme

    def spawn(self, script: Script) -> None:
        """Start a script; its first yield is when it begins."""
        try:
            first = next(script)
        except StopIteration:
            return
        self._seq += 1
        heapq.heappush(self._queue, (first, self._seq, script))

    def run(self) -> list[dict[str, object]]:
        pending = list(self._deploys)
        while self._queue:
            t, _, script = heapq.heappop(self._queue)
            if t > self.end:
                break
            while pending and pending[0].ts <= t:
                self._apply(pending.pop(0))
            self.now = t
            try:
                wake = next(script)
            except StopIteration:
                continue
            if wake < t:
                raise SteeringError(f"{self.service}: a script went back in time")
            self._seq += 1
            heapq.heappush(self._queue, (wake, self._seq, script))
        for deploy in pending:
            self._apply(deploy)
        return self.events

    def truths(self) -> list[DeployTruth]:
        return [
            DeployTruth(self.service, d.version, d.ts, d.regression_cause) for d in self._deploys
        ]

    def _apply(self, deploy: _Deploy) -> None:
        self.version = deploy.version
        if deploy.scheme is not None:
            self.scheme = deploy.scheme

    # what the server computes

    def _etag(self, res: _Resource, replica: int, scheme: _Scheme | None = None) -> str:
        value = (scheme or self.scheme).compute(res.rid, res.state, replica, res.born[res.state])
        return "W/" + value if res.weak else value

    def _replica(self, replica: int | None) -> int:
        return self.rng.randrange(self.replicas) if replica is None else replica

    def _scheme_change_after(self, t: float) -> float | None:
        """When ETags were first computed differently after `t`, if that has happened by now."""
        current = self._scheme_at(t)
        for d in self._deploys:
            if t < d.ts <= self.now and d.scheme is not None and d.scheme.name != current:
                return d.ts
        return None

    def _scheme_at(self, t: float) -> str:
        name = self._first_scheme
        for d in self._deploys:
            if d.ts <= t and d.scheme is not None:
                name = d.scheme.name
        return name

    # reads (never logged)

    def read(self, rid: str, *, replica: int | None = None, proxy: str | None = None) -> _Token:
        res = self.resources[rid]
        if not res.alive:
            raise SteeringError(f"{self.service}: read of deleted {rid}")
        rep = self._replica(replica)
        value = self._etag(res, rep)
        if proxy is not None:
            value = _PROXIES[proxy](value)
        return _Token(value, rid, res.state, self.scheme.name, rep, proxy, self.now)

    def old_token(self, rid: str, state: int) -> _Token:
        """A token for an earlier state, held since before the stream (a tab left open)."""
        res = self.resources[rid]
        value = self.scheme.compute(rid, state, 0, res.born[state])
        return _Token(value, rid, state, self.scheme.name, 0, None, res.born[state] + 1.0)

    # writes (logged)

    def _clear_of_deploys(self) -> Generator[float, None, None]:
        for d in self._deploys:
            if abs(self.now - d.ts) < DEPLOY_GAP:
                yield d.ts + DEPLOY_GAP + self.rng.uniform(0.05, 0.5)

    def put(
        self,
        client: str,
        rid: str,
        token: _Token,
        *,
        method: str = "PUT",
        route: str | None = None,
        replica: int | None = None,
        conflict_status: int = 412,
        reason: str | None = None,
        log_validators: bool = True,
    ) -> Op:
        """A conditional write with `If-Match: <token>`; None when the client gave up instead."""
        res = self.resources[rid]
        rep = self._replica(replica)
        while True:
            yield from self._clear_of_deploys()
            current = self._etag(res, rep)
            if res.alive and _strong_match(token.value, current):
                return self._succeed(client, res, rep, token, method, route, log_validators)
            wait = self._hazard(client, res, token)
            if wait is None:
                break
            if wait == _ABANDON:
                return None
            yield wait
        cause = self._explain(client, res, token, current, log_validators)
        superseded_at = None
        if cause in ("concurrent_write", "stale_etag"):
            superseded_at = res.superseded[token.state]
        logged = self._emit(
            conflict_status,
            res,
            client,
            method,
            route,
            im=token.value if log_validators else None,
            ce=current if log_validators else None,
            reason=reason if conflict_status == 409 else None,
            cause=cause,
            superseded_at=superseded_at,
        )
        self._failed[(client, rid, token.value)] = (self.now, logged)
        if logged and log_validators:
            res.seen.add(current)
        return _Outcome(ok=False)

    def _succeed(
        self,
        client: str,
        res: _Resource,
        replica: int,
        token: _Token | None,
        method: str,
        route: str | None,
        log_validators: bool,
        *,
        im: str | None = None,
        inm: str | None = None,
        status: int = 200,
    ) -> _Outcome:
        old, existed = res.state, res.alive
        if existed:
            res.superseded[old] = self.now
            res.superseding_im[old] = token.value if token is not None else None
        res.state = old + 1
        res.alive = True
        res.born[res.state] = self.now
        new = self._etag(res, replica)
        sent_im = token.value if token is not None else im
        logged = self._emit(
            status,
            res,
            client,
            method,
            route,
            im=sent_im if log_validators else None,
            inm=inm,
            ce=new if log_validators else None,
        )
        if existed:
            res.superseded_logged[old] = logged
        if logged and log_validators:
            res.seen.add(new)
            if sent_im is not None and sent_im != "*":
                res.seen.add(sent_im)
        proxy = token.proxy if token is not None else None
        held = _PROXIES[proxy](new) if proxy is not None else new
        return _Outcome(
            True, _Token(held, res.rid, res.state, self.scheme.name, replica, proxy, self.now)
        )

    def put_star(self, client: str, rid: str, *, method: str = "PUT") -> Op:
        """`If-Match: *`: update if the resource exists."""
        yield from self._clear_of_deploys()
        res = self.resources[rid]
        rep = self._replica(None)
        if res.alive:
            return self._succeed(client, res, rep, None, method, None, True, im="*")
        self._emit(412, res, client, method, None, im="*", cause="resource_gone")
        return _Outcome(ok=False)

    def create(self, client: str, rid: str, *, route: str, method: str = "PUT") -> Op:
        """`If-None-Match: *`: create unless it exists."""
        yield from self._clear_of_deploys()
        res = self.resources.setdefault(rid, _Resource(rid, route, -1, alive=False))
        rep = self._replica(None)
        if not res.alive:
            return self._succeed(client, res, rep, None, method, None, True, inm="*", status=201)
        current = self._etag(res, rep)
        if self._emit(412, res, client, method, None, inm="*", ce=current, cause="create_conflict"):
            res.seen.add(current)
        return _Outcome(ok=False)

    def put_unconditional(self, client: str, rid: str, *, with_etag: bool) -> Op:
        """A write without a precondition where the service requires one: 428."""
        yield from self._clear_of_deploys()
        res = self.resources[rid]
        current = self._etag(res, self._replica(None)) if with_etag else None
        logged = self._emit(428, res, client, "PUT", None, ce=current, cause="missing_precondition")
        if logged and current is not None:
            res.seen.add(current)
        return _Outcome(ok=False)

    def refuse(self, client: str, rid: str, *, route: str, reason: str) -> Op:
        """A state conflict the application refuses (409), no validator involved."""
        yield from self._clear_of_deploys()
        res = self.resources[rid]
        self._emit(409, res, client, "POST", route, reason=reason, cause="business_conflict")
        return _Outcome(ok=False)

    def delete(self, client: str, rid: str, token: _Token | None) -> Op:
        """A DELETE: logged with its If-Match when `token` is given, else an unlogged purge."""
        yield from self._clear_of_deploys()
        res = self.resources[rid]
        res.superseded[res.state] = self.now
        res.superseding_im[res.state] = token.value if token is not None else None
        res.alive = False
        logged = False
        if token is not None:
            logged = self._emit(204, res, client, "DELETE", None, im=token.value)
        res.superseded_logged[res.state] = logged
        return _Outcome(ok=True)

    # labelling

    def _hazard(self, client: str, res: _Resource, token: _Token) -> float | None:
        """When a failing save now would be ambiguous: a time to wait until, or _ABANDON."""
        same = token.resource == res.rid
        t_s = res.superseded.get(token.state) if same else None
        if t_s is not None:
            t_c = self._scheme_change_after(token.read_at)
            if t_c is None or t_s < t_c:  # a write killed the token, not a deploy
                if t_c is not None and t_c <= self.now:
                    before = self._schemes[token.scheme].shape
                    if before != self.scheme.shape:
                        return _ABANDON  # old format points at the deploy, history at the write
                age = self.now - t_s
                unseen = not res.superseded_logged.get(token.state, False)
                if unseen and age <= WINDOW + EDGE and self.now >= self.log_from:
                    return _ABANDON  # a logged race whose winner nobody logged
                if abs(age - WINDOW) < EDGE:
                    return t_s + WINDOW + EDGE + self.rng.uniform(0.1, 1.0)
        prior = self._failed.get((client, res.rid, token.value))
        if prior is not None:
            at, logged = prior
            if not logged and self.now - at <= WINDOW + EDGE and self.now >= self.log_from:
                return _ABANDON  # a logged retry of a 412 nobody logged
            if abs(self.now - at - WINDOW) < EDGE:
                return at + WINDOW + EDGE + self.rng.uniform(0.1, 1.0)
        return None

    def _explain(
        self, client: str, res: _Resource, token: _Token, current: str, log_validators: bool
    ) -> str:
        """Why this If-Match failed, from what the world did (see the module docstring)."""
        if not log_validators:
            return "unknown"  # the event carries no validator: nothing to tell a cause by
        read = self.now >= self.log_from  # only a logged failure has a reader to mislead
        if res.weak:
            return "weak_etag"
        if token.proxy is not None:
            undone = self._etag(res, token.replica, self._schemes[token.scheme])
            if token.resource != res.rid or token.state != res.state or undone != current:
                raise SteeringError(f"{self.service}: proxied token failed for another reason")
            return "proxy_rewrite"
        same = token.resource == res.rid
        t_s = res.superseded.get(token.state) if same else None
        t_c = self._scheme_change_after(token.read_at) if same else None
        if same and t_c is not None and (t_s is None or t_c < t_s):
            same_shape = self._schemes[token.scheme].shape == self.scheme.shape
            if read and same_shape and token.value not in res.seen:
                raise SteeringError(f"{self.service}: same-shape change on an unseen ETag")
            return "format_change"
        if same and t_s is None:
            return "unstable_etag"
        prior = self._failed.get((client, res.rid, token.value))
        if prior is not None and self.now - prior[0] <= WINDOW:
            return "blind_retry"
        if same and t_s is not None:
            if self.now - t_s <= WINDOW:
                known = (
                    token.value in res.seen or res.superseding_im.get(token.state) == token.value
                )
                if read and (not res.superseded_logged.get(token.state, False) or not known):
                    raise SteeringError(f"{self.service}: a race nobody could see")
                return "concurrent_write"
            return "stale_etag"
        if read and token.value not in self.resources[token.resource].seen:
            raise SteeringError(f"{self.service}: cross-resource ETag never logged")
        return "cross_resource"

    def _emit(
        self,
        status: int,
        res: _Resource,
        client: str,
        method: str,
        route: str | None,
        *,
        im: str | None = None,
        inm: str | None = None,
        ce: str | None = None,
        reason: str | None = None,
        cause: str | None = None,
        superseded_at: float | None = None,
    ) -> bool:
        """Log one answered request (only from `log_from` on); True when it was logged."""
        if self.now < self.log_from:
            return False
        request_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        if request_id in self._request_ids:
            raise SteeringError(f"{self.service}: request id collision")
        self._request_ids.add(request_id)
        event: dict[str, object] = {
            "ts": round(self.now, 6),
            "service": self.service,
            "route": route or res.route,
            "method": method,
            "status": status,
            "request_id": request_id,
            "resource_id": res.rid,
        }
        optional: dict[str, object | None] = {
            "if_match": im,
            "if_none_match": inm,
            "current_etag": ce,
            "client_id": client,
            "deploy_version": self.version,
            "reason": reason,
            "truth_cause": cause,
            "truth_superseded_at": None if superseded_at is None else round(superseded_at, 6),
        }
        event.update({k: v for k, v in optional.items() if v is not None})
        self.events.append(event)
        return True


# --- client behaviour -------------------------------------------------------------------------


def _save_until_done(
    w: _World,
    client: str,
    rid: str,
    token: _Token,
    *,
    attempts: int = 4,
    blind: bool = False,
    proxy: str | None = None,
) -> Generator[float, None, _Outcome | None]:
    """Save; after a 412 refetch (or, `blind`, resend the same ETag) and try again."""
    out: _Outcome | None = None
    for _ in range(attempts):
        out = yield from w.put(client, rid, token)
        if out is None or out.ok:
            return out
        yield w.now + w.rng.uniform(0.3, 3.0)
        if not blind:
            token = w.read(rid, proxy=proxy)
            yield w.now + w.rng.uniform(0.5, 5.0)
    return out


def _edit(w: _World, client: str, rid: str, start: float, think: float) -> Script:
    """Read, think, save; refetch and retry after a 412."""
    yield start
    token = w.read(rid)
    yield w.now + think
    yield from _save_until_done(w, client, rid, token)


def _save_later(w: _World, client: str, rid: str, token: _Token, at: float) -> Script:
    yield at
    yield from _save_until_done(w, client, rid, token)


def _traffic(
    w: _World,
    pool: Sequence[str],
    clients: Sequence[str],
    start: float,
    end: float,
    rate: float,
    think: tuple[float, float] = (2.0, 60.0),
) -> Script:
    """Everyday edits at `rate` per second; a tenth of the pool gets a third of them."""
    t = start
    while True:
        t += w.rng.expovariate(rate)
        if t >= end:
            return
        yield t
        hot = w.rng.random() < 0.3
        rid = w.rng.choice(pool[: max(1, len(pool) // 10)] if hot else pool)
        w.spawn(_edit(w, w.rng.choice(clients), rid, t, w.rng.uniform(*think)))


def _stale_tab(
    w: _World,
    client: str,
    other: str,
    rid: str,
    read_at: float,
    superseded_after: float,
    save_at: float,
) -> Script:
    """A tab opened at `read_at`; someone else saves soon after; the tab saves much later."""
    yield read_at
    token = w.read(rid)
    w.spawn(_edit(w, other, rid, read_at + superseded_after, w.rng.uniform(0.5, 3.0)))
    yield save_at
    yield from _save_until_done(w, client, rid, token)


def _stale_tabs(
    w: _World,
    name: str,
    pool: Sequence[str],
    count: int,
    when: Callable[[], tuple[float, float]],
    *,
    superseded_within: float = 90.0,
) -> None:
    """`count` stale tabs on `pool`, each opened and saved at the times `when()` draws, its
    ETag superseded by another client 5 to `superseded_within` seconds after it was read."""
    for i in range(count):
        read_at, save_at = when()
        rid = w.rng.choice(pool)
        other = f"{name}-peer-{i:03d}"
        after = w.rng.uniform(5, superseded_within)
        w.spawn(_stale_tab(w, f"{name}-{i:03d}", other, rid, read_at, after, save_at))


def _old_tab(w: _World, client: str, rid: str, save_at: float) -> Script:
    """A tab that has held an ETag since before the stream began."""
    yield save_at
    res = w.resources[rid]
    token = w.old_token(rid, max(0, res.state - w.rng.randint(1, 3)))
    yield from _save_until_done(w, client, rid, token)


def _race(
    w: _World,
    winner: str,
    loser: str,
    rid: str,
    read_at: float,
    win_after: float,
    lose_after: float,
) -> Script:
    """Two clients read the same state; the winner saves first, the loser `lose_after` later."""
    yield read_at
    a, b = w.read(rid), w.read(rid)
    w.spawn(_save_later(w, winner, rid, a, read_at + win_after))
    yield read_at + win_after + lose_after
    yield from _save_until_done(w, loser, rid, b)


def _users(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i:03d}" for i in range(count)]


# --- scenarios --------------------------------------------------------------------------------

HOUR = 3600.0


def _roughen(w: _World, *, drop_versions: bool) -> list[dict[str, object]]:
    """What real logs look like: optional fields missing, a few numeric-string timestamps.

    client_id goes only from successful writes (a failure's client is what ties a blind retry
    to its first 412); deploy_version only where no deploy happens.
    """
    rng = random.Random(f"rough/{w.rng.random()}")
    for event in w.events:
        roll = rng.random()
        if roll < 0.015:
            del event["route"]
        elif roll < 0.03:
            del event["method"]
        status = event["status"]
        if isinstance(status, int) and status < 300 and rng.random() < 0.03:
            event.pop("client_id", None)
        if drop_versions and rng.random() < 0.03:
            del event["deploy_version"]
        if rng.random() < 0.01:
            event["ts"] = repr(event["ts"])
    return w.events


def _scenario(w: _World) -> Scenario:
    events = _roughen(w, drop_versions=not w.truths())
    return Scenario(w.service, events, w.truths())


def _ledger(seed: int, start: float) -> Scenario:
    """Accounts met mid-life: their first event is a write whose If-Match the log never saw."""
    end = start + HOUR
    w = _World("ledger", end=end, seed=seed, version="3.8.2", scheme=_body_hash("ledger"))
    ids = w.populate("acct", 420, route="/api/accounts/{id}", quiet_since=start - 900)
    fresh, busy = ids[:170], ids[170:]
    active = list(busy)  # fresh accounts join everyday traffic after their race
    users = _users("user", 400)
    w.spawn(_traffic(w, active, users, start, end - 60, rate=0.55))

    def race_then_join(rid: str, t: float) -> Script:
        yield from _race(
            w,
            f"teller-{rid[-3:]}",
            f"app-{rid[-3:]}",
            rid,
            t,
            w.rng.uniform(1, 20),
            w.rng.uniform(0.2, 25),
        )
        active.append(rid)

    for i, rid in enumerate(fresh):
        w.spawn(race_then_join(rid, start + 20 + i * 3400 / len(fresh) + w.rng.uniform(0, 15)))

    def after_a_while() -> tuple[float, float]:
        read_at = start + w.rng.uniform(0, 2600)
        return read_at, read_at + 90 + WINDOW + w.rng.uniform(30, 900)

    _stale_tabs(w, "tab", busy, 80, after_a_while)
    for i in range(40):
        w.spawn(_old_tab(w, f"kiosk-{i:03d}", w.rng.choice(busy), start + w.rng.uniform(10, 3500)))
    w.run()
    return _scenario(w)


def _billing(seed: int, start: float) -> Scenario:
    """A service whose first hour is missing: clients hold ETags the log never showed."""
    end = start + HOUR
    w = _World(
        "billing", end=end, seed=seed, version="5.1.0", scheme=_body_hash("billing"), log_from=start
    )
    ids = w.populate("inv", 320, route="/api/invoices/{id}", quiet_since=start - HOUR - 600)
    busy, quiet = ids[:260], ids[260:]
    w.spawn(_traffic(w, busy, _users("payer", 300), start - HOUR, end - 60, rate=0.5))

    def across_the_gap() -> tuple[float, float]:  # opened in the missing hour, saved after
        return start - w.rng.uniform(400, 1800), start + w.rng.uniform(10, 1500)

    def after_a_while() -> tuple[float, float]:
        read_at = start + w.rng.uniform(0, 2300)
        return read_at, read_at + 90 + WINDOW + w.rng.uniform(30, 900)

    _stale_tabs(w, "lost-tab", busy, 40, across_the_gap)
    _stale_tabs(w, "tab", busy, 60, after_a_while)
    for i, rid in enumerate(quiet):  # read in the missing hour, saved after it: IM never seen
        w.spawn(
            _save_later(
                w,
                f"slow-{i:03d}",
                rid,
                _read_at(w, rid, start - w.rng.uniform(60, 3000)),
                start + w.rng.uniform(5, 1800),
            )
        )
    w.run()
    return _scenario(w)


def _read_at(w: _World, rid: str, t: float) -> _Token:
    """The token a read at `t` would have given, for a resource nobody writes in between."""
    return replace(w.old_token(rid, w.resources[rid].state), read_at=t)


def _catalog(seed: int, start: float) -> Scenario:
    """A deploy regenerates every ETag in the same shape (md5 with a new serialiser)."""
    end = start + HOUR
    deploy_at = start + 1500
    w = _World("catalog", end=end, seed=seed, version="4.2.0", scheme=_body_hash("catalog-json-v1"))
    w.deploy(deploy_at, "4.3.0", _body_hash("catalog-json-v2"), "format_change")
    ids = w.populate("sku", 260, route="/api/products/{id}", quiet_since=start - 600)
    # A nightly importer touches every product first, so each one's current ETag is in the log
    # before anybody holds it across the deploy.
    for i, rid in enumerate(ids):
        w.spawn(_edit(w, "importer", rid, start + 20 + i * 4.0, w.rng.uniform(0.2, 1.5)))
    w.spawn(_traffic(w, ids, _users("merchant", 300), start + 1100, end - 60, rate=0.45))
    for i in range(90):  # read before the deploy, saved just after it
        rid = w.rng.choice(ids)
        token_at = deploy_at - w.rng.uniform(10, 190)
        w.spawn(
            _hold_across(w, f"editor-{i:03d}", rid, token_at, deploy_at + w.rng.uniform(2, 100))
        )
    for i in range(25):  # a race whose winner saved before the deploy, the loser after it
        read_at = deploy_at - w.rng.uniform(30, 90)
        win_after = deploy_at - read_at - w.rng.uniform(3, 20)
        lose_after = deploy_at - read_at - win_after + w.rng.uniform(3, 60)
        w.spawn(
            _race(
                w,
                f"pricer-{i:03d}",
                f"stocker-{i:03d}",
                w.rng.choice(ids),
                read_at,
                win_after,
                lose_after,
            )
        )
    w.run()
    return _scenario(w)


def _hold_across(w: _World, client: str, rid: str, read_at: float, save_at: float) -> Script:
    yield read_at
    token = w.read(rid)
    yield save_at
    yield from _save_until_done(w, client, rid, token)


def _assets(seed: int, start: float) -> Scenario:
    """A deploy changes the ETag format, after a baseline with some stale tabs in it."""
    end = start + HOUR
    deploy_at = start + 1800
    w = _World("assets", end=end, seed=seed, version="2.8.1", scheme=_body_hash("assets"))
    w.deploy(deploy_at, "3.0.0", _prefixed_hash("assets"), "format_change")
    ids = w.populate("img", 260, route="/api/assets/{id}", quiet_since=start - 900)
    w.spawn(_traffic(w, ids, _users("designer", 300), start, end - 60, rate=0.45))

    def in_the_baseline() -> tuple[float, float]:  # the noisy baseline before the deploy
        save_at = deploy_at - w.rng.uniform(10, 900)
        return save_at - 90 - WINDOW - w.rng.uniform(40, 500), save_at

    def after_the_deploy() -> tuple[float, float]:  # stale in the new format
        read_at = deploy_at + w.rng.uniform(5, 900)
        return read_at, read_at + 90 + WINDOW + w.rng.uniform(30, 600)

    _stale_tabs(w, "tab", ids, 70, in_the_baseline)
    _stale_tabs(w, "new-tab", ids, 25, after_the_deploy)
    for i in range(30):
        w.spawn(
            _old_tab(w, f"cache-{i:03d}", w.rng.choice(ids), deploy_at - w.rng.uniform(10, 900))
        )
    for i in range(75):  # the burst: read before the deploy, saved within two minutes after
        token_at = deploy_at - w.rng.uniform(10, 240)
        w.spawn(
            _hold_across(
                w,
                f"uploader-{i:03d}",
                w.rng.choice(ids),
                token_at,
                deploy_at + w.rng.uniform(2, 110),
            )
        )
    w.run()
    return _scenario(w)


def _files(seed: int, start: float) -> Scenario:
    """Three replicas compute inode ETags: the same file has a different ETag on each."""
    end = start + HOUR
    w = _World("files", end=end, seed=seed, version="1.9.4", scheme=_inode(), replicas=3)
    ids = w.populate("file", 150, route="/dav/{path}", quiet_since=start - 600)
    for i, rid in enumerate(ids):
        w.spawn(_sync_owner(w, f"device-{i:03d}", rid, start, end - 60, blind=i % 8 == 0))
    w.run()
    return _scenario(w)


def _sync_owner(
    w: _World, client: str, rid: str, start: float, end: float, *, blind: bool
) -> Script:
    """One device syncs its file: read through one replica, write through whichever answers.

    Each file has a single writer, so every 412 here is the replicas disagreeing. After a 412
    the client refetches within about a second (or, `blind`, resends the same ETag: still
    `unstable_etag`, which DESIGN puts before `blind_retry`), so a file's failures come in
    quick bursts in which its current ETag flips between replicas. The device's first sync
    in the stream is a plain successful write, so the log shows each file's current ETag
    before its first 412 (`_sync_plan` says how the rest is kept readable).
    """
    t = start
    last: int | None = None  # the replica that answered the file's last logged write
    while True:
        t = max(t, w.now) + w.rng.expovariate(1 / 900)
        if t >= end:
            return
        yield t
        if last is None:
            first = w.rng.randrange(w.replicas)
            plan = [(first, first)]
        else:
            plan = _sync_plan(w.rng, w.replicas, last, blind=blind)
        token = w.read(rid, replica=plan[0][0])
        yield w.now + w.rng.uniform(0.5, 20)
        for i, (read_from, write_to) in enumerate(plan):
            if i:
                yield w.now + w.rng.uniform(0.2, 0.6)
                if not blind:
                    token = w.read(rid, replica=read_from)
                yield w.now + w.rng.uniform(0.2, 0.6)
            out = yield from w.put(client, rid, token, replica=write_to)
            if out is None:
                return
        last = plan[-1][1]


def _sync_plan(
    rng: random.Random, replicas: int, last: int, *, blind: bool
) -> list[tuple[int, int]]:
    """Which replica answers each read and write of one sync, up to the write that succeeds.

    Drawn at random, and drawn again while some 412 in it could not be told from a stale
    ETag: DESIGN's evidence for `unstable_etag` is the current ETag going back to an earlier
    value (A, B, A) with If-Match one of those values, and a reader has only the logged
    current ETags (the last write's, each 412's, and the next write's If-Match). Every 412
    kept has that evidence by the next logged event at the latest (at most 1.2 s later).
    """
    for _ in range(500):
        plan: list[tuple[int, int]] = []
        held = rng.randrange(replicas)
        while len(plan) < 6:
            if plan and not blind:
                held = rng.randrange(replicas)
            answered = rng.randrange(replicas)
            plan.append((held, answered))
            if held == answered:
                break
        if len(plan) == 1 and rng.random() < 0.85:
            continue  # most syncs of a file that changed on another device meet a 412 first
        if plan[-1][0] == plan[-1][1] and _flips_readable(plan, last):
            return plan
    other = (last + 1) % replicas
    return [(last, other), (last, last)]


def _flips_readable(plan: Sequence[tuple[int, int]], last: int) -> bool:
    """Whether each failed attempt's If-Match is in an A, B, A flip of the logged ETags
    seen by the attempt after it."""
    seen = [last] + [answered for _, answered in plan]  # a success logs its If-Match: `held`
    for i, (held, answered) in enumerate(plan):
        if held != answered and not _in_flip(seen[: i + 3], held):
            return False
    return True


def _in_flip(seen: Sequence[int], value: int) -> bool:
    """Whether `seen` goes A, B, A somewhere with `value` one of A and B."""
    for p, a in enumerate(seen):
        for q in range(p + 1, len(seen)):
            b = seen[q]
            if b != a and value in (a, b) and a in seen[q + 1 :]:
                return True
    return False


def _notes(seed: int, start: float) -> Scenario:
    """A deploy that changes nothing, then stale tabs that happen to save after it."""
    end = start + HOUR
    deploy_at = start + 1800
    w = _World("notes", end=end, seed=seed, version="7.1.0", scheme=_body_hash("notes"))
    w.deploy(deploy_at, "7.1.1", None, None)
    ids = w.populate("note", 230, route="/api/notes/{id}", quiet_since=start - 900)
    busy, quiet = ids[:200], ids[200:]
    w.spawn(_traffic(w, busy, _users("writer", 300), start, end - 60, rate=0.45))

    def all_along() -> tuple[float, float]:
        read_at = start + w.rng.uniform(0, 2700)
        return read_at, read_at + 90 + WINDOW + w.rng.uniform(30, 500)

    def across_the_deploy() -> tuple[float, float]:  # superseded long before, saved after it
        return start + w.rng.uniform(600, 1400), deploy_at + w.rng.uniform(5, 600)

    _stale_tabs(w, "tab", busy, 30, all_along)
    _stale_tabs(w, "laptop", busy, 55, across_the_deploy, superseded_within=60)
    for i, rid in enumerate(quiet):  # read before, saved after, nobody in between: still fine
        w.spawn(
            _hold_across(
                w,
                f"reader-{i:03d}",
                rid,
                deploy_at - w.rng.uniform(60, 600),
                deploy_at + w.rng.uniform(5, 600),
            )
        )
    w.run()
    return _scenario(w)


def _tickets(seed: int, start: float) -> Scenario:
    """A race storm on a few hot tickets that spans a no-op deploy."""
    end = start + HOUR
    deploy_at = start + 1800
    w = _World("tickets", end=end, seed=seed, version="12.4.0", scheme=_body_hash("tickets"))
    w.deploy(deploy_at, "12.5.0", None, None)
    ids = w.populate("tkt", 310, route="/api/tickets/{id}", quiet_since=start - 900)
    hot, normal = ids[:10], ids[10:]
    w.spawn(_traffic(w, normal, _users("reporter", 300), start, end - 60, rate=0.3))
    for i in range(25):
        w.spawn(_agent(w, f"agent-{i:02d}", hot, start + 1500 + w.rng.uniform(0, 60), start + 2400))
    w.run()
    return _scenario(w)


def _agent(w: _World, client: str, hot: Sequence[str], start: float, end: float) -> Script:
    """A support agent working the hot queue; assignments answer a version conflict with 409."""
    yield start
    while w.now < end:
        rid = w.rng.choice(hot)
        token = w.read(rid)
        yield w.now + w.rng.uniform(1, 12)
        assign = w.rng.random() < 0.3
        for _ in range(4):
            if assign:
                out = yield from w.put(
                    client,
                    rid,
                    token,
                    method="PATCH",
                    route="/api/tickets/{id}/assignee",
                    conflict_status=409,
                    reason="the ticket changed since you loaded it",
                )
            else:
                out = yield from w.put(client, rid, token)
            if out is None or out.ok:
                break
            yield w.now + w.rng.uniform(0.5, 2.5)
            token = w.read(rid)
            yield w.now + w.rng.uniform(0.5, 3)
        yield w.now + w.rng.uniform(2, 20)


def _sparse(seed: int, start: float) -> Scenario:
    """Three requests before a deploy that changes the ETag format, a modest burst after.

    The label is a choice: with three requests of baseline, nobody can say the failure rate
    after the deploy (about a sixth of the requests) is above the rate before it, so a
    careful detector must wait; flagging it would be the eagerness a sparse baseline must
    not cause. The after-deploy evidence alone is real but not overwhelming (a couple of
    dozen failures among about 130 requests), so the deploy is labelled not flagged.
    """
    end = start + HOUR
    deploy_at = start + 1500
    w = _World("sparse", end=end, seed=seed, version="0.9.0", scheme=_body_hash("sparse"))
    w.deploy(deploy_at, "1.0.0", _prefixed_hash("sparse"), None)
    ids = w.populate("doc", 60, route="/api/docs/{id}", quiet_since=start - 900)
    for i, ago in enumerate((400, 250, 100)):
        w.spawn(_edit(w, f"early-{i}", ids[i], deploy_at - ago, w.rng.uniform(1, 5)))
    for i, rid in enumerate(ids[3:27]):
        read_at = deploy_at - w.rng.uniform(30, 600)
        w.spawn(
            _hold_across(w, f"holder-{i:03d}", rid, read_at, deploy_at + w.rng.uniform(5, 1500))
        )
    w.spawn(_traffic(w, ids, _users("user", 80), deploy_at + 2, end - 60, rate=0.04))
    w.run()
    return _scenario(w)


def _sparse_empty(seed: int, start: float) -> Scenario:
    """Nothing in the ten minutes before a no-op deploy; some unexplained stale tabs after it."""
    end = start + HOUR
    deploy_at = start + 1500
    w = _World(
        "sparse-empty", end=end, seed=seed, version="3.3.0", scheme=_body_hash("sparse-empty")
    )
    w.deploy(deploy_at, "3.4.0", None, None)
    ids = w.populate("page", 80, route="/api/pages/{id}", quiet_since=start - 900)
    for i, at in enumerate((60, 150, 240)):
        w.spawn(_edit(w, f"early-{i}", ids[i], start + at, w.rng.uniform(1, 5)))
    for i in range(14):
        w.spawn(
            _old_tab(w, f"kiosk-{i:03d}", w.rng.choice(ids[3:]), deploy_at + w.rng.uniform(5, 1500))
        )
    w.spawn(_traffic(w, ids, _users("editor", 120), deploy_at + 2, end - 60, rate=0.06))
    w.run()
    return _scenario(w)


def _edge(seed: int, start: float) -> Scenario:
    """Some clients reach the origin through intermediaries that rewrite every ETag."""
    end = start + HOUR
    w = _World("edge", end=end, seed=seed, version="6.0.2", scheme=_body_hash("edge"))
    ids = w.populate("page", 200, route="/api/pages/{id}", quiet_since=start - 900)
    direct, proxied = ids[:150], ids[150:]
    w.spawn(_traffic(w, direct, _users("visitor", 300), start, end - 60, rate=0.3))
    kinds = sorted(_PROXIES)
    for i in range(72):  # each proxied page has one visitor at a time, about an hour apart
        rid = proxied[i % len(proxied)]
        w.spawn(_behind_proxy(w, f"cdn-{i:03d}", rid, kinds[i % len(kinds)], start + 30 + i * 48))
    w.run()
    return _scenario(w)


def _behind_proxy(w: _World, client: str, rid: str, proxy: str, start: float) -> Script:
    """Save through the proxy twice (refetching in between), then give up and use `If-Match: *`."""
    yield start
    token = w.read(rid, proxy=proxy)
    yield w.now + w.rng.uniform(2, 40)
    out = yield from _save_until_done(w, client, rid, token, attempts=2, proxy=proxy)
    if out is not None and not out.ok:
        yield w.now + w.rng.uniform(1, 5)
        yield from w.put_star(client, rid)


def _legacy(seed: int, start: float) -> Scenario:
    """An origin that emits weak ETags on profiles, strong ones on settings."""
    end = start + HOUR
    w = _World("legacy", end=end, seed=seed, version="2.2.7", scheme=_body_hash("legacy"))
    profiles = w.populate(
        "profile", 150, route="/api/profiles/{id}", quiet_since=start - 900, weak=True
    )
    settings = w.populate("setting", 100, route="/api/settings/{id}", quiet_since=start - 900)
    w.spawn(_traffic(w, settings, _users("admin", 100), start, end - 60, rate=0.25))
    for i in range(75):
        rid = profiles[i % len(profiles)]
        w.spawn(_weak_client(w, f"profile-ui-{i:03d}", rid, start + 20 + i * 46, strip=i % 3 == 0))
    w.run()
    return _scenario(w)


def _weak_client(w: _World, client: str, rid: str, start: float, *, strip: bool) -> Script:
    """Save with the weak ETag (or with `W/` stripped off), maybe once more, then `If-Match: *`."""
    yield start
    token = w.read(rid)
    if strip:
        token = replace(token, value=token.value.removeprefix("W/"))
    yield w.now + w.rng.uniform(2, 60)
    for _ in range(2 if w.rng.random() < 0.4 else 1):
        out = yield from w.put(client, rid, token)
        if out is None or out.ok:
            return
        yield w.now + w.rng.uniform(1, 5)
        token = w.read(rid)
    yield from w.put_star(client, rid)


def _orders(seed: int, start: float) -> Scenario:
    """Orders: ETags cached under the wrong key, a retry bot, deletes, creates, 428s and 409s."""
    end = start + HOUR
    w = _World("orders", end=end, seed=seed, version="9.3.1", scheme=_body_hash("orders"))
    ids = w.populate("ord", 400, route="/api/orders/{id}", quiet_since=start - 900)
    busy, gone = ids[:340], ids[340:]
    notes = w.populate("ordnote", 60, route="/api/orders/{id}/notes", quiet_since=start - 900)
    w.spawn(_traffic(w, busy, _users("shopper", 400), start, end - 60, rate=0.35))

    for i in range(55):
        a, b = w.rng.sample(busy, 2)
        w.spawn(_wrong_key(w, f"android-{i:03d}", a, b, start + w.rng.uniform(10, 3300)))
    for i in range(40):
        w.spawn(
            _retry_bot(
                w,
                f"sync-bot-{i:02d}",
                w.rng.choice(busy),
                start + w.rng.uniform(10, 3000),
                stale=i % 4 == 0,
            )
        )
    for i, rid in enumerate(gone):
        w.spawn(
            _deleted(
                w, f"fulfilment-{i:03d}", rid, start + w.rng.uniform(10, 2000), logged=i % 2 == 0
            )
        )
    for i in range(30):
        w.spawn(
            _create(w, f"importer-{i % 5}", w.rng.choice(busy), start + w.rng.uniform(10, 3500))
        )
    for i in range(20):
        t = start + w.rng.uniform(10, 3500)
        w.spawn(_create(w, f"checkout-{i:03d}", f"ord-new-{i:03d}", t))
        w.spawn(
            _create(w, f"checkout-retry-{i:03d}", f"ord-new-{i:03d}", t + w.rng.uniform(0.05, 1.5))
        )
    for i in range(45):
        w.spawn(_erp(w, w.rng.choice(busy), start + w.rng.uniform(10, 3500), with_etag=i % 2 == 0))
    for _ in range(45):
        w.spawn(
            _cancel(
                w,
                f"support-{w.rng.randrange(20):02d}",
                w.rng.choice(busy),
                start + w.rng.uniform(10, 3500),
            )
        )
    for i in range(45):  # the notes route logs neither If-Match nor the current ETag
        rid = notes[i % len(notes)]
        w.spawn(_headerless_race(w, f"clerk-{i:03d}", f"courier-{i:03d}", rid, start + 30 + i * 75))
    w.run()
    return _scenario(w)


def _wrong_key(w: _World, client: str, a: str, b: str, start: float) -> Script:
    """Save order `a`, keep its new ETag under `b`'s key, then save `b` with it."""
    yield start
    token = w.read(a)
    yield w.now + w.rng.uniform(2, 20)
    out = yield from _save_until_done(w, client, a, token)
    if out is None or out.token is None:
        return
    yield w.now + w.rng.uniform(5, 120)
    yield from _save_until_done(w, client, b, out.token)


def _retry_bot(w: _World, client: str, rid: str, start: float, *, stale: bool) -> Script:
    """A bot whose ETag someone else superseded; after its 412 it resends it a few times."""
    yield start
    token = w.read(rid)
    w.spawn(_edit(w, f"{client}-peer", rid, start + w.rng.uniform(1, 8), w.rng.uniform(0.5, 2)))
    wait = WINDOW + w.rng.uniform(60, 300) if stale else w.rng.uniform(12, 40)
    yield w.now + wait
    out = yield from _save_until_done(
        w, client, rid, token, attempts=w.rng.randint(3, 5), blind=True
    )
    if out is not None and not out.ok:
        yield w.now + w.rng.uniform(5, 30)
        yield from _save_until_done(w, client, rid, w.read(rid))


def _deleted(w: _World, client: str, rid: str, start: float, *, logged: bool) -> Script:
    """An order is deleted (a logged DELETE or an unlogged purge); later `If-Match: *` on it."""
    yield start
    token = w.read(rid) if logged else None
    yield w.now + w.rng.uniform(1, 10)
    yield from w.delete("admin-console" if logged else "purge-job", rid, token)
    yield w.now + w.rng.uniform(30, 1500)
    for _ in range(2 if w.rng.random() < 0.3 else 1):
        yield from w.put_star(client, rid)
        yield w.now + w.rng.uniform(2, 30)


def _create(w: _World, client: str, rid: str, at: float) -> Script:
    yield at
    yield from w.create(client, rid, route="/api/orders/{id}")


def _erp(w: _World, rid: str, at: float, *, with_etag: bool) -> Script:
    yield at
    yield from w.put_unconditional("erp-sync", rid, with_etag=with_etag)


def _cancel(w: _World, client: str, rid: str, at: float) -> Script:
    yield at
    reason = w.rng.choice(("order already shipped", "order is being packed", "refund pending"))
    yield from w.refuse(client, rid, route="/api/orders/{id}/cancel", reason=reason)


def _headerless_race(w: _World, winner: str, loser: str, rid: str, start: float) -> Script:
    yield start
    a, b = w.read(rid), w.read(rid)
    yield w.now + w.rng.uniform(1, 10)
    yield from w.put(winner, rid, a, log_validators=False)
    yield w.now + w.rng.uniform(0.5, 20)
    out = yield from w.put(loser, rid, b, log_validators=False)
    if out is not None and not out.ok:
        yield w.now + w.rng.uniform(1, 5)
        yield from w.put(loser, rid, w.read(rid), log_validators=False)


_BUILDERS: tuple[Callable[[int, float], Scenario], ...] = (
    _ledger,
    _billing,
    _catalog,
    _assets,
    _files,
    _notes,
    _tickets,
    _sparse,
    _sparse_empty,
    _edge,
    _legacy,
    _orders,
)


# --- public API -------------------------------------------------------------------------------


def generate(seed: int = 1, start: float = 1_790_000_000.0) -> list[Scenario]:
    """Every scenario, about an hour of event time from `start`, deterministic per `seed`."""
    return [build(seed, start) for build in _BUILDERS]


def deliver(
    events: Iterable[dict[str, object]],
    *,
    max_delay: float = 2.5,
    duplicate_ratio: float = 0.02,
    seed: int = 1,
) -> list[dict[str, object]]:
    """The lines a shipper sends: each up to `max_delay` late, a `duplicate_ratio` twice."""
    rng = random.Random(f"deliver/{seed}")
    lines: list[tuple[float, int, dict[str, object]]] = []
    for event in events:
        ts = _seconds(event["ts"])
        lines.append((ts + rng.uniform(0, max_delay), len(lines), event))
        if rng.random() < duplicate_ratio:
            lines.append((ts + rng.uniform(0, max_delay), len(lines), event))
    lines.sort(key=lambda line: (line[0], line[1]))
    return [dict(event) for _, _, event in lines]


def truth(scenarios: Iterable[Scenario]) -> dict[tuple[str, str], str]:
    """(service, request_id) -> true cause, for every failure."""
    return {
        (str(e["service"]), str(e["request_id"])): str(e["truth_cause"])
        for s in scenarios
        for e in s.events
        if "truth_cause" in e
    }


def _seconds(ts: object) -> float:
    if isinstance(ts, int | float | str):
        return float(ts)
    raise TypeError(f"ts: {ts!r}")
