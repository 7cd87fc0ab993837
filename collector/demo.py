"""Demo traffic: simulated clients that read, think and write with If-Match; true causes known."""

from __future__ import annotations

import heapq
import random
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

__all__ = ["CAUSES", "DemoConfig", "Event", "deliver", "generate", "truth"]

Event = dict[str, object]
# A simulated actor: a generator that yields how many seconds to wait before it resumes.
_Process = Iterator[float]
_Key = tuple[str, str]  # (service, resource_id)

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
)

# Each service's deploy versions with the ETag format it generates, oldest first.
_VERSIONS: dict[str, tuple[tuple[str, re.Pattern[str]], ...]] = {
    "orders": (("v1", re.compile(r'"[0-9a-f]{32}"')), ("v2", re.compile(r'"v2-[0-9a-f]{16}"'))),
    "carts": (("2024.11.3", re.compile(r'"[0-9a-f]{16}"')),),
    "profiles": (("3.14.0", re.compile(r'W/"[0-9a-f]{12}"')),),
    "inventory": (("5.2.1", re.compile(r'"[0-9a-f]{40}"')),),
    "files": (("7.1.0", re.compile(r'"[0-9a-f]+-[0-9a-f]+-[0-9a-f]+"')),),
}
_REPLICAS = 3  # the file servers behind the `files` load balancer
_ORDER = "/api/orders/{id}"
_CART = "/api/carts/{id}"
_PROFILE = "/api/profiles/{id}"
_ITEM = "/api/inventory/{sku}"
_FILE = "/api/files/{path}"
# How each proxied cart client sees the origin's ETag after the gzip proxy rewrote it.
_CART_CLIENTS = (
    ("shop-web/5.3", "gzip"),
    ("shop-android/8.1", "weak"),
    ("shop-ios/8.0", "br"),
    ("partner-feed/2.0", "unquoted"),
)
# The canonical event fields of DESIGN.md, in the order events list them, then the ground truth.
_FIELDS: tuple[str, ...] = ("ts", "service", "route", "method", "status", "request_id")
_FIELDS += ("resource_id", "if_match", "if_none_match", "current_etag", "client_id")
_FIELDS += ("deploy_version", "reason", "demo_cause")
_MARGIN = 0.05  # no failure lands this close to a window boundary, so the truth is unambiguous


@dataclass(frozen=True)
class DemoConfig:
    """What to simulate; the defaults give every cause at least 20 times."""

    seed: int = 7
    start: float = 1_790_000_000.0  # event time of the first event
    duration: float = 1800.0  # seconds of simulated traffic
    rate: float = 20.0  # mean conditional requests per second over all services (approx.)
    window: float = 300.0  # the concurrency window W (PW_CONCURRENCY_WINDOW_SECONDS)
    deploy_at: float = 900.0  # seconds after start when "orders" deploys v2


def generate(config: DemoConfig) -> list[Event]:
    """Simulate the services and return their events in true event-time order."""
    sim = _Sim(config)
    sim.run()
    return sim.events


def deliver(
    events: Iterable[Event],
    *,
    max_delay: float = 2.5,
    duplicate_ratio: float = 0.02,
    seed: int = 7,
) -> list[Event]:
    """Reorder events as a log shipper delivers them: late by up to max_delay, some twice."""
    rng = random.Random(seed)
    source = list(events)
    arrivals = [(_ts(ev) + rng.uniform(0, max_delay), i, ev) for i, ev in enumerate(source)]
    copies = sorted(rng.sample(range(len(source)), round(len(source) * duplicate_ratio)))
    for n, i in enumerate(copies):
        arrived, _, ev = arrivals[i]
        later = rng.uniform(arrived, _ts(ev) + max_delay)
        arrivals.append((later, len(source) + n, ev))
    arrivals.sort(key=lambda a: (a[0], a[1]))
    return [dict(ev) for _, _, ev in arrivals]


def truth(events: Iterable[Event]) -> dict[tuple[str, str], str]:
    """Map (service, request_id) to the true cause of every failure."""
    return {
        (str(ev["service"]), str(ev["request_id"])): str(ev["demo_cause"])
        for ev in events
        if "demo_cause" in ev
    }


def _ts(ev: Event) -> float:
    value = ev["ts"]
    if not isinstance(value, (int, float)):
        raise TypeError(f"ts must be a number, got {value!r}")
    return float(value)


def _undo_rewrite(tag: str) -> str:
    """Undo what a compressing proxy does to an ETag: W/ added, -gzip/-br suffix, quotes lost."""
    value = tag.removeprefix("W/")
    if not value.startswith('"'):
        value = f'"{value}"'
    for suffix in ('-gzip"', '-br"'):
        if value.endswith(suffix):
            value = value[: -len(suffix)] + '"'
    return value


def _rewrite(tag: str, kind: str) -> str:
    opaque = tag.strip('"')
    return {
        "gzip": f'"{opaque}-gzip"',
        "br": f'"{opaque}-br"',
        "weak": f'W/"{opaque}"',
        "unquoted": opaque,
    }[kind]


def _high_entropy(tag: str) -> bool:
    opaque = tag.removeprefix("W/").strip('"')
    return len(opaque) >= 16 and not opaque.isdecimal()


def _zipf(n: int, s: float) -> list[float]:
    """Cumulative Zipf weights for random.choices: rank 1 is the hottest."""
    total, cum = 0.0, []
    for rank in range(1, n + 1):
        total += rank**-s
        cum.append(total)
    return cum


class _Sim:
    """The discrete-event simulation: actors are generators scheduled on an event-time heap."""

    def __init__(self, cfg: DemoConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.now = cfg.start
        self.last_ts = cfg.start - 1.0
        self.deployed = False
        self.events: list[Event] = []
        self._heap: list[tuple[float, int, _Process]] = []
        self._seq = 0
        # The true state: each resource's current ETag (None once deleted).
        self.current: dict[_Key, str | None] = {}
        # What the logs show: each resource's 2xx writes, and where each logged ETag sits.
        self.writes: dict[_Key, list[tuple[float, str]]] = {}
        self.lineage: dict[tuple[str, str], tuple[str, int]] = {}
        self.last412: dict[tuple[str, str, str, str], float] = {}
        # What the logs show of each resource's current ETag since its newest logged write
        # (whether a write starts it, and the values in order), and every ETag they mention.
        self.spans: dict[_Key, tuple[bool, list[str]]] = {}
        self.mentioned: set[tuple[str, str, str]] = set()
        # The file servers: each file's content (size, mtime) and its inode on each replica.
        self.files: dict[str, tuple[int, int]] = {}
        self.inodes: dict[tuple[str, int], int] = {}
        self.request_ids: set[str] = set()
        self.etags: set[str] = set()
        self.ids: set[str] = set()
        self.busy: set[str] = set()
        self.pools = {
            "orders": ([f"ord-{10000 + i}" for i in range(20000)], _zipf(20000, 0.75)),
            "profiles": ([f"prf-{58000 + i}" for i in range(3000)], _zipf(3000, 0.8)),
            "inventory": ([f"sku-{i * 7 + 4211:06d}" for i in range(6000)], _zipf(6000, 0.8)),
            "files": ([f"docs/{i:04d}.md" for i in range(400)], _zipf(400, 0.9)),
        }

    # -- scheduling -------------------------------------------------------------------------

    def spawn(self, process: _Process, delay: float = 0.0) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (self.now + delay, self._seq, process))

    def run(self) -> None:
        cfg, r = self.cfg, self.cfg.rate
        end = cfg.start + cfg.duration
        self.spawn(self._deploy(), cfg.deploy_at)
        for rate, make in (
            (0.40 * r, self._human),
            (0.012 * r, self._cart),
            (0.025 * r, self._profile),
            (0.17 * r, self._scanner),
            (0.05 * r, self._reservation),
            (0.007 * r, self._legacy_import),
            (0.002 * r, self._create_race),
            (0.002 * r, self._discontinue),
            (0.04 * r, self._file_editor),
        ):
            self.spawn(self._poisson(rate, make))
        self.spawn(self._retry_bot())
        self.spawn(self._sync_bot())
        while self._heap and self._heap[0][0] <= end:
            self.now, _, process = heapq.heappop(self._heap)
            delay = next(process, None)
            if delay is not None:
                self.spawn(process, delay)

    def _poisson(self, rate: float, make: Callable[[], _Process]) -> _Process:
        while True:
            yield self.rng.expovariate(rate)
            self.spawn(make())

    def _deploy(self) -> _Process:
        """Orders v2: every order's ETag changes format at once, without any write."""
        self.last_ts = self._stamp()
        self.deployed = True
        for key, tag in self.current.items():
            if key[0] == "orders" and tag is not None:
                self.current[key] = self._etag("orders")
                self.spans[key] = (False, [])  # the new version starts a new span
        yield from ()

    # -- state and logging ------------------------------------------------------------------

    def _stamp(self) -> float:
        """The next event time: milliseconds, strictly increasing, so no two events tie."""
        return round(max(self.now, self.last_ts + 0.001), 3)

    def _unique(self, used: set[str], make: Callable[[], str]) -> str:
        value = make()
        while value in used:
            value = make()
        used.add(value)
        return value

    def _claim(self, make: Callable[[], str]) -> str | None:
        """A client id that has no session in flight, or None when all seem busy."""
        for _ in range(50):
            client = make()
            if client not in self.busy:
                self.busy.add(client)
                return client
        return None

    def _etag(self, service: str) -> str:
        bits = self.rng.getrandbits
        make: Callable[[], str] = {
            "orders": lambda: f'"v2-{bits(64):016x}"' if self.deployed else f'"{bits(128):032x}"',
            "carts": lambda: f'"{bits(64):016x}"',
            "profiles": lambda: f'W/"{bits(48):012x}"',
            "inventory": lambda: f'"{bits(160):040x}"',
            "files": lambda: f'"{bits(20):x}-{bits(16):x}-{bits(30):x}"',
        }[service]
        return self._unique(self.etags, make)

    def _version(self, service: str) -> str:
        versions = _VERSIONS[service]
        return versions[min(int(self.deployed), len(versions) - 1)][0]

    def _emit(
        self,
        service: str,
        route: str,
        method: str,
        status: int,
        resource: str,
        client: str,
        *,
        im: str | None = None,
        inm: str | None = None,
        ce: str | None = None,
        reason: str | None = None,
    ) -> bool:
        """Log one answered request; a failure is labelled, or dropped if no rule explains it."""
        ts, key = self._stamp(), (service, resource)
        cause = None
        if status >= 300:
            cause = self._cause(ts, service, status, resource, client, im, inm, ce)
            if cause is None:
                return False
        request_id = self._unique(self.request_ids, lambda: f"req-{self.rng.getrandbits(64):016x}")
        values: tuple[object, ...] = (ts, service, route, method, status, request_id, resource)
        values += (im, inm, ce, client, self._version(service), reason, cause)
        self.events.append({k: v for k, v in zip(_FIELDS, values, strict=True) if v is not None})
        self.last_ts = ts
        # A failure's If-Match is no evidence of the lineage; a write's is (current until it).
        shown = (ce, im) if status < 300 else (ce,)
        self.mentioned.update((service, resource, tag) for tag in shown if tag)
        if status < 300:
            self.spans[key] = (ce is not None, [ce] if ce else [])
        elif ce is not None:
            self.spans.setdefault(key, (False, []))[1].append(ce)
        if status < 300 and ce is not None:
            self.current[key] = ce
            history = self.writes.setdefault(key, [])
            self.lineage[(service, ce)] = (resource, len(history))
            history.append((ts, ce))
        elif status == 412 and im is not None:
            self.last412[(service, client, resource, im)] = ts
        return True

    def _superseded_age(self, ts: float, service: str, resource: str, tag: str) -> float | None:
        """Seconds since the logged write that replaced tag on this resource, if there was one."""
        owner, index = self.lineage.get((service, tag), ("", -1))
        history = self.writes.get((service, resource), [])
        if owner != resource or index + 1 >= len(history):
            return None
        return ts - history[index + 1][0]

    def _cause(
        self,
        ts: float,
        service: str,
        status: int,
        resource: str,
        client: str,
        im: str | None,
        inm: str | None,
        ce: str | None,
    ) -> str | None:
        """The classification rules, first match wins, applied to what the logs show."""
        window = self.cfg.window
        if status == 428:
            return "missing_precondition"
        if status == 409 and (im is None or ce is None):
            return "business_conflict"
        if im == "*":
            return "resource_gone"
        if inm == "*" and im is None:
            return "create_conflict"
        if im is None or ce is None:
            return None
        if ce.startswith("W/"):
            return "weak_etag"
        if im != ce and _undo_rewrite(im) == ce:
            return "proxy_rewrite"
        versions = _VERSIONS[service]
        now = min(int(self.deployed), len(versions) - 1)
        earlier = any(p.fullmatch(im) for _, p in versions[:now])
        if earlier and not versions[now][1].fullmatch(im) and versions[now][1].fullmatch(ce):
            return "format_change"
        if self._flipped(service, resource, im, ce):
            return "unstable_etag"
        previous = self.last412.get((service, client, resource, im))
        if previous is not None and ts - previous <= window:
            return "blind_retry"
        age = self._superseded_age(ts, service, resource, im)
        if age is not None:
            return "concurrent_write" if age <= window else "stale_etag"
        owner = self.lineage.get((service, im), (resource, 0))[0]
        if owner != resource and _high_entropy(im):
            return "cross_resource"
        return None

    def _flipped(self, service: str, resource: str, im: str, ce: str) -> bool:
        """Whether the logs show the current ETag moving with no write since the newest one
        (off the write's ETag, or back to an earlier value), with If-Match among those values
        or never logged for this resource."""
        from_write, values = self.spans.get((service, resource), (False, []))
        folded: list[str] = []
        for tag in [*values, ce]:
            if not folded or folded[-1] != tag:
                folded.append(tag)
        distinct = set(folded)
        if not (len(distinct) < len(folded) or (from_write and len(distinct) > 1)):
            return False
        return im in distinct or (service, resource, im) not in self.mentioned

    def _near_boundary(self, service: str, resource: str, client: str, im: str) -> bool:
        """True when a write now would be within _MARGIN of a window edge (wait a moment)."""
        ts = self._stamp()
        ages = [self._superseded_age(ts, service, resource, im)]
        previous = self.last412.get((service, client, resource, im))
        ages.append(None if previous is None else ts - previous)
        return any(a is not None and abs(a - self.cfg.window) < _MARGIN for a in ages)

    def _pick(self, service: str) -> str:
        ids, cum = self.pools[service]
        return self.rng.choices(ids, cum_weights=cum)[0]

    def _ensure(self, service: str, resource: str, route: str, client: str) -> str:
        """The resource's current ETag, creating (and logging) it on first use."""
        tag = self.current.get((service, resource))
        if tag is None:
            tag = self._etag(service)
            self._emit(service, route, "POST", 201, resource, client, ce=tag)
        return tag

    def _write(
        self, service: str, route: str, method: str, resource: str, client: str, im: str
    ) -> bool | None:
        """A write with If-Match: True on 2xx, False on a logged 412, None if not logged."""
        current = self.current.get((service, resource))
        if current is not None and (im == "*" or (im == current and not im.startswith("W/"))):
            status = 204 if method == "PATCH" else 200
            return self._emit(
                service, route, method, status, resource, client, im=im, ce=self._etag(service)
            )
        if self._emit(service, route, method, 412, resource, client, im=im, ce=current):
            return False
        return None

    def _new_id(self, prefix: str, bits: int) -> str:
        return self._unique(self.ids, lambda: f"{prefix}{self.rng.getrandbits(bits):0{bits // 4}x}")

    # -- actors -----------------------------------------------------------------------------

    def _human(self) -> _Process:
        """A person on the orders UI: read, think, write; refetch after a 412 half the time."""
        rng = self.rng
        user = self._claim(lambda: f"web/u{rng.randrange(1, 10000):04d}")
        if user is None:
            return
        order = self._pick("orders")
        seen = self._ensure("orders", order, "/api/orders", user)
        think = rng.uniform(360, 1200) if rng.random() < 0.07 else rng.uniform(2, 60)
        for attempt in range(3):
            yield think
            while self._near_boundary("orders", order, user, seen):
                yield 0.25
            method = rng.choice(("PUT", "PATCH"))
            if self._write("orders", _ORDER, method, order, user, seen) is not False:
                break
            if attempt == 2 or rng.random() < 0.5:
                break
            seen = self.current[("orders", order)] or seen
            think = rng.uniform(2, 30)
        self.busy.discard(user)

    def _cart(self) -> _Process:
        """A shopper behind the gzip proxy: creates a cart, then every If-Match write fails."""
        client, kind = self.rng.choice(_CART_CLIENTS)
        cart = self._new_id("cart-", 32)
        origin = self._etag("carts")
        self._emit("carts", _CART, "PUT", 201, cart, client, inm="*", ce=origin)
        for _ in range(self.rng.randint(1, 3)):
            yield self.rng.uniform(3, 90)
            self._write("carts", _CART + "/items", "PATCH", cart, client, _rewrite(origin, kind))

    def _profile(self) -> _Process:
        """A mobile user editing a profile whose origin only emits weak ETags."""
        rng = self.rng
        client = f"mobile/u{rng.randrange(1, 10000):04d}"
        profile = self._pick("profiles")
        seen = self._ensure("profiles", profile, "/api/profiles", client)
        yield rng.uniform(3, 60)
        if rng.random() < 0.5:
            self._write("profiles", _PROFILE, "PUT", profile, client, seen)
            yield rng.uniform(0.3, 2.0)  # the app gives up on If-Match and overwrites
        self._emit("profiles", _PROFILE, "PUT", 200, profile, client, ce=self._etag("profiles"))

    def _scanner(self) -> _Process:
        """A warehouse handheld adjusting stock: read-modify-write, one refetch after a 412."""
        rng = self.rng
        device = self._claim(lambda: f"scanner/wh{rng.randint(1, 6)}-{rng.randint(1, 40):02d}")
        if device is None:
            return
        sku = self._pick("inventory")
        seen = self._ensure("inventory", sku, "/api/inventory", "catalog-import")
        think = rng.uniform(0.5, 20)
        for attempt in range(2):
            yield think
            while self._near_boundary("inventory", sku, device, seen):
                yield 0.25
            if self._write("inventory", _ITEM, "PATCH", sku, device, seen) is not False:
                break
            if attempt == 1 or rng.random() < 0.3:
                break
            seen = self.current[("inventory", sku)] or seen
            think = rng.uniform(0.5, 10)
        self.busy.discard(device)

    def _retry_bot(self) -> _Process:
        """An integration that resends the same If-Match 2-5 times after a 412, never refetching."""
        rng = self.rng
        while True:
            yield rng.uniform(2, 20)
            sku = self.pools["inventory"][0][rng.randrange(12)]  # the hot SKUs it syncs
            seen = self._ensure("inventory", sku, "/api/inventory", "catalog-import")
            yield rng.uniform(5, 45)
            while self._near_boundary("inventory", sku, "retry-bot", seen):
                yield 0.25
            if self._write("inventory", _ITEM, "PUT", sku, "retry-bot", seen) is False:
                for _ in range(rng.randint(2, 5)):
                    yield rng.uniform(1, 3)
                    self._write("inventory", _ITEM, "PUT", sku, "retry-bot", seen)

    def _sync_bot(self) -> _Process:
        """A batch sync that sometimes sends the ETag it cached under a neighbouring SKU."""
        rng = self.rng
        while True:
            yield rng.uniform(20, 60)
            batch = sorted({self._pick("inventory") for _ in range(rng.randint(5, 12))})
            tags = [self._ensure("inventory", s, "/api/inventory", "catalog-import") for s in batch]
            for i, sku in enumerate(batch):
                yield rng.uniform(0.2, 1.5)
                wrong = len(batch) > 1 and rng.random() < 0.2
                tag = tags[(i + 1) % len(batch)] if wrong else tags[i]
                while self._near_boundary("inventory", sku, "sync-bot", tag):
                    yield 0.25
                self._write("inventory", _ITEM, "PUT", sku, "sync-bot", tag)

    def _reservation(self) -> _Process:
        """Checkout reserving stock: unconditional writes, or a 409 when stock runs out."""
        sku = self._pick("inventory")
        self._ensure("inventory", sku, "/api/inventory", "catalog-import")
        route = _ITEM + "/reservations"
        if self.rng.random() < 0.18:
            want = self.rng.randint(2, 9)
            have = self.rng.randint(0, want - 1)
            reason = f"insufficient stock: requested {want}, available {have}"
            self._emit("inventory", route, "POST", 409, sku, "checkout-api", reason=reason)
        else:
            tag = self._etag("inventory")
            self._emit("inventory", route, "POST", 200, sku, "checkout-api", ce=tag)
        yield from ()

    def _legacy_import(self) -> _Process:
        """The legacy importer overwrites items without any precondition: 428."""
        sku = self._pick("inventory")
        self._emit("inventory", _ITEM, "PUT", 428, sku, "legacy-importer")
        yield from ()

    def _create_race(self) -> _Process:
        """Two feeds create the same new SKU with If-None-Match: *; the second one loses."""
        sku = self._new_id("sku-n", 24)
        first, second = self.rng.sample(("supplier-feed/acme", "catalog-import", "pim-sync"), 2)
        self._emit("inventory", _ITEM, "PUT", 201, sku, first, inm="*", ce=self._etag("inventory"))
        yield self.rng.uniform(0.05, 1.5)
        current = self.current[("inventory", sku)]
        self._emit("inventory", _ITEM, "PUT", 412, sku, second, inm="*", ce=current)

    def _file_etag(self, path: str, replica: int) -> str:
        """Apache's default file ETag: inode, size and mtime, and each server has its own
        inode for the same file."""
        size, mtime = self.files[path]
        inode = self.inodes.setdefault((path, replica), self.rng.getrandbits(24) | 1 << 20)
        return f'"{inode:x}-{size:x}-{mtime:x}"'

    def _file_editor(self) -> _Process:
        """An editor behind the load balancer of three file servers: reads from one, saves
        through another. Saved through the server it read from, it succeeds; through another
        with the file unchanged, it fails because the servers disagree about the ETag."""
        rng = self.rng
        editor = self._claim(lambda: f"editor/u{rng.randrange(1, 400):03d}")
        if editor is None:
            return
        path = self._pick("files")
        if path not in self.files:
            self.files[path] = (rng.randrange(200, 90_000), int(self.now) - 86_400)
            self._emit("files", _FILE, "PUT", 201, path, editor, inm="*",
                       ce=self._file_etag(path, rng.randrange(_REPLICAS)))  # fmt: skip
        read_from, content = rng.randrange(_REPLICAS), self.files[path]
        seen = self._file_etag(path, read_from)
        yield rng.uniform(2, 40)
        save_to = rng.randrange(_REPLICAS)
        current = self._file_etag(path, save_to)
        if self.files[path] == content and save_to == read_from:
            self.files[path] = (rng.randrange(200, 90_000), int(self.now))
            self._emit("files", _FILE, "PUT", 200, path, editor, im=seen,
                       ce=self._file_etag(path, save_to))  # fmt: skip
        else:
            # The file changed meanwhile (a race) or the servers disagree (the same file): the
            # demo logs the 412 only when its logs show which, as a collector would see it.
            truth = "unstable_etag" if self.files[path] == content else "concurrent_write"
            ts = self._stamp()
            shown = self._cause(ts, "files", 412, path, editor, seen, None, current)
            if shown == truth:
                self._emit("files", _FILE, "PUT", 412, path, editor, im=seen, ce=current)
        self.busy.discard(editor)

    def _discontinue(self) -> _Process:
        """An item is deleted (deletes are not logged); the price job's If-Match: * then fails."""
        sku = self._new_id("sku-d", 24)
        tag = self._etag("inventory")
        self._emit("inventory", _ITEM, "PUT", 201, sku, "catalog-import", inm="*", ce=tag)
        yield self.rng.uniform(30, 300)
        self.current[("inventory", sku)] = None
        for _ in range(self.rng.randint(1, 3)):
            yield self.rng.uniform(2, 120)
            self._write("inventory", _ITEM, "PATCH", sku, "price-updater", "*")
