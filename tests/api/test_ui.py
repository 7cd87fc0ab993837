"""Drill-down pages: a service, a request's decision, a resource's timeline; and in Chromium."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from collector import demo
from collector.api import create_app
from collector.api.causes import CAUSES, describe_cause
from collector.api.ui import (
    cause_shares,
    deploy_rows,
    draw_strip,
    evidence_rows,
    format_duration,
    ink,
    request_href,
    resource_href,
)
from collector.classify import Cause
from collector.deploys import Deploy
from collector.runtime import Collector
from collector.settings import Settings
from tests.conftest import ROOT, find_binary, free_port, make_store, wait_for

NDJSON = {"Content-Type": "application/x-ndjson"}
A = '"9e107d9d372bb6826bd81d3542a419d6"'
B = '"e4d909c290d0fb1ca068ffaddf22cbd0"'
C = '"0cc175b9c0f1b6a831c399e269772661"'
V2 = '"v2-8f14e45fceea167a"'


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: str = ""
    children: list[Element] = field(default_factory=list)

    def find_all(self, tag: str | None = None, **attrs: str) -> list[Element]:
        """Descendants with this tag (any if None) whose attributes include `attrs`
        (`data_testid` stands for `data-testid`)."""
        wanted = {k.replace("_", "-"): v for k, v in attrs.items()}
        found = []
        for child in self.children:
            if (tag is None or child.tag == tag) and all(
                child.attrs.get(k) == v for k, v in wanted.items()
            ):
                found.append(child)
            found.extend(child.find_all(tag, **attrs))
        return found

    def one(self, tag: str | None = None, **attrs: str) -> Element:
        found = self.find_all(tag, **attrs)
        assert len(found) == 1, f"expected one {tag} {attrs}, found {len(found)}"
        return found[0]

    def all_text(self) -> str:
        return " ".join([self.text, *(c.all_text() for c in self.children)]).strip()


class _TreeBuilder(HTMLParser):
    VOID = frozenset({"meta", "link", "br", "img", "input", "hr", "line", "rect", "circle"})

    def __init__(self) -> None:
        super().__init__()
        self.root = Element("#root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(element)
        if tag not in self.VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Element(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        for index in range(len(self.stack) - 1, 0, -1):
            if self.stack[index].tag == tag:
                del self.stack[index:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].text += data


def parse_html(text: str) -> Element:
    builder = _TreeBuilder()
    builder.feed(text)
    return builder.root


@pytest.fixture
def client() -> Iterator[TestClient]:
    settings = Settings(settle_interval_seconds=60)
    with TestClient(create_app(settings, Collector(settings, store=make_store("fake")))) as c:
        yield c


def post(client: TestClient, *events: dict[str, object]) -> None:
    body = b"\n".join(orjson.dumps(e) for e in events)
    response = client.post("/v1/events?service=shop", content=body, headers=NDJSON)
    assert response.status_code == 200
    assert response.json()["rejected"] == []


def stream(now: float) -> list[dict[str, object]]:
    """A race on o1, a gzip proxy on o2, and a deploy of v2 that changed the ETag format."""
    w = {"status": 200, "deploy_version": "v1", "route": "/items/{id}", "method": "PUT"}
    f = {"status": 412, "route": "/items/{id}", "method": "PUT"}
    return [
        {**w, "ts": now - 90, "request_id": "w0", "resource_id": "o1", "etag": A},
        {**w, "ts": now - 80, "request_id": "w1", "resource_id": "o1", "etag": B,
         "client_id": "billing"},
        {**f, "ts": now - 70, "request_id": "f1", "resource_id": "o1", "if_match": A,
         "current_etag": B, "client_id": "web", "deploy_version": "v1"},
        {**w, "ts": now - 60, "request_id": "w2", "resource_id": "o2", "etag": C},
        {**f, "ts": now - 50, "request_id": "f2", "resource_id": "o2",
         "if_match": C[:-1] + '-gzip"', "current_etag": C, "client_id": "<script>x</script>",
         "deploy_version": "v1"},
        {**w, "ts": now - 40, "request_id": "w3", "resource_id": "o3", "etag": A},
        {**w, "ts": now - 20, "request_id": "w4", "resource_id": "o4", "etag": V2,
         "deploy_version": "v2"},
        {**f, "ts": now - 10, "request_id": "f3", "resource_id": "o3", "if_match": A,
         "current_etag": V2, "deploy_version": "v2"},
    ]  # fmt: skip


@pytest.fixture
def settled(client: TestClient) -> TestClient:
    post(client, *stream(time.time()))
    client.post("/v1/flush").raise_for_status()
    for request_id in ("f1", "f2", "f3"):
        assert client.get(f"/v1/services/shop/requests/{request_id}").json()["cause"]
    return client


def page(client: TestClient, path: str, status: int = 200) -> Element:
    response = client.get(path)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    return parse_html(response.text)


# -- the pages, server-side -------------------------------------------------------------------


def test_service_page_lists_causes_hot_resources_and_deploys(settled: TestClient) -> None:
    """The service page shows each cause with what to do, hot resources linked, and deploys."""
    html = page(settled, "/ui/services/shop")
    causes = html.one(data_testid="causes")
    rows = {r.attrs["data-cause"]: r for r in causes.find_all("tr") if "data-cause" in r.attrs}
    assert set(rows) == {"concurrent_write", "proxy_rewrite", "format_change"}
    assert CAUSES["proxy_rewrite"].action in rows["proxy_rewrite"].all_text()
    hot = html.one(data_testid="hot")
    links = {a.text: a.attrs["href"] for a in hot.find_all("a")}
    assert links == {r: f"/ui/services/shop/resources/{r}" for r in ("o1", "o2", "o3")}
    deploys = html.one(data_testid="deploys")
    versions = [
        r.attrs["data-version"] for r in deploys.find_all("tr") if "data-version" in r.attrs
    ]
    assert versions == ["v2", "v1"]  # newest first
    assert "S:v{N}-hex16" in deploys.all_text()
    assert "being judged" in html.one(data_testid="verdict").all_text()


def test_request_page_names_the_competing_write(settled: TestClient) -> None:
    """A race's page says the cause in words, what on-call does, and links the winning write."""
    html = page(settled, "/ui/services/shop/requests/f1")
    assert html.one(data_testid="cause").one("span").attrs["data-cause"] == "concurrent_write"
    assert html.one(data_testid="action").all_text().endswith(CAUSES["concurrent_write"].action)
    evidence = html.one(data_testid="evidence")
    winner = evidence.one("a")
    assert winner.attrs["href"] == "/ui/services/shop/resources/o1#e-w1"
    assert "w1 by billing" in winner.text
    assert "lost by 10.0 s" in evidence.all_text()
    facts = html.one(data_testid="request").all_text()
    assert "PUT" in facts and A in facts and "web" in facts


def test_request_page_shows_rewrite_and_formats(settled: TestClient) -> None:
    """A proxy rewrite names the rewrite; a format change shows both formats and versions."""
    rewrite = page(settled, "/ui/services/shop/requests/f2").one(data_testid="evidence")
    assert "a -gzip suffix was appended" in rewrite.all_text()
    change = page(settled, "/ui/services/shop/requests/f3").one(data_testid="evidence")
    text = change.all_text()
    assert "S:hex32 (as version v1 made them)" in text
    assert "S:v{N}-hex16 (as version v2 makes them)" in text


def test_pending_request_says_it_is_not_decided_yet(client: TestClient) -> None:
    """Before settling, the request page shows it as pending, with no evidence yet."""
    post(client, *stream(time.time()))
    # f3 is the newest event: the watermark (newest minus the lateness) has not passed it.
    html = page(client, "/ui/services/shop/requests/f3")
    assert html.one(data_testid="cause").one("span").attrs["data-cause"] == "pending"
    assert html.one(data_testid="evidence").text == "Not decided yet."
    # Settled before the app stops: its shutdown waits 5 s for a settler left mid-sweep.
    client.post("/v1/flush").raise_for_status()


def test_resource_page_draws_writes_and_failures_coloured_by_cause(settled: TestClient) -> None:
    """The strip has one mark per event: writes as ticks, failures as dots in their cause's
    colour linking to their request page; the table lists every event."""
    html = page(settled, "/ui/services/shop/resources/o1")
    svg = html.one(data_testid="timeline-strip").one("svg")
    marks = svg.find_all("a")
    assert [(m.attrs["data-kind"], m.attrs["data-request-id"]) for m in marks] == [
        ("write", "w0"),
        ("write", "w1"),
        ("failure", "f1"),
    ]
    failure = marks[2]
    assert failure.attrs["href"] == "/ui/services/shop/requests/f1"
    assert failure.one("circle").attrs["fill"] == CAUSES["concurrent_write"].colour
    assert "412 f1" in failure.one("title").text
    # A write is a 3-wide bar drawn from x - 1.5, a failure a dot centred on x.
    xs = [float(m.one("rect").attrs["x"]) + 1.5 for m in marks[:2]]
    xs.append(float(failure.one("circle").attrs["cx"]))
    assert xs == sorted(xs) and xs[0] < xs[-1]
    rows = html.one(data_testid="events").find_all("tr")[1:]
    assert [r.attrs["id"] for r in rows] == ["e-w0", "e-w1", "e-f1"]
    legend = html.one(data_testid="strip-legend")
    assert [s.attrs["data-cause"] for s in legend.find_all("span") if "data-cause" in s.attrs] == [
        "concurrent_write"
    ]


def test_unknown_things_are_404_pages(client: TestClient) -> None:
    """An unknown service, request or resource is an HTML 404 that names it."""
    for path, name in (
        ("/ui/services/nope", "'nope'"),
        ("/ui/services/shop/requests/r9", "'r9'"),
        ("/ui/services/shop/resources/o9", "'o9'"),
    ):
        assert name in page(client, path, status=404).one(data_testid="not-found").text


def test_services_index_links_every_service(settled: TestClient) -> None:
    """/ui redirects to the list of services, each linked to its page."""
    response = settled.get("/ui")
    assert str(response.url).endswith("/ui/services")
    links = parse_html(response.text).one(data_testid="services").find_all("a")
    assert [(a.text, a.attrs["href"]) for a in links] == [("shop", "/ui/services/shop")]


def test_values_from_events_are_escaped(settled: TestClient) -> None:
    """A client id with markup is shown as text, never as markup."""
    response = settled.get("/ui/services/shop/requests/f2")
    assert "<script>x</script>" not in response.text
    assert "&lt;script&gt;x&lt;/script&gt;" in response.text


def test_ids_with_slashes_and_spaces_are_quoted_in_links() -> None:
    """Links quote ids whole, so a resource id with a slash or space still opens its page."""
    assert resource_href("a b", "x/y") == "/ui/services/a%20b/resources/x%2Fy"
    assert request_href("s", "r#1") == "/ui/services/s/requests/r%231"
    assert resource_href("s", "o", "w 1") == "/ui/services/s/resources/o#e-w%201"


# -- the page models, pure --------------------------------------------------------------------


def test_every_cause_has_words_and_a_distinct_colour() -> None:
    """Each cause the classifier can decide (and unstable_etag) has a text, an action and its
    own colour."""
    assert {str(c) for c in Cause} | {"unstable_etag"} <= set(CAUSES)
    colours = [text.colour for text in CAUSES.values()]
    assert all(re.fullmatch(r"#[0-9A-F]{6}", c) for c in colours)
    assert len(set(colours)) == len(colours)
    assert all(text.title and text.meaning and text.action for text in CAUSES.values())
    assert describe_cause("brand_new").title == "brand_new"


def test_ink_is_readable_on_light_and_dark() -> None:
    """Badge text is black on light colours and white on dark ones."""
    assert ink("#FFFFFF") == "#000000"
    assert ink("#890F02") == "#FFFFFF"


def test_strip_places_events_by_time() -> None:
    """Oldest at the left margin, newest at the right, one event alone in the middle."""
    timeline = [
        ("w", {"ts": 100.0, "status": 200}, None),
        ("f", {"ts": 150.0, "status": 412}, {"cause": "stale_etag", "evidence": {}}),
        ("g", {"ts": 200.0, "status": 412}, None),
    ]
    strip = draw_strip("s", "o", timeline, width=216)
    assert [m.x for m in strip.marks] == [16.0, 108.0, 200.0]
    assert [m.colour for m in strip.marks][1:] == [CAUSES["stale_etag"].colour, "#FFFFFF"]
    assert [cause for cause, _ in strip.legend] == ["stale_etag"]
    assert len(strip.ticks) == 5
    alone = draw_strip("s", "o", timeline[:1], width=216)
    assert [m.x for m in alone.marks] == [108.0]


def test_cause_shares_sum_minutes() -> None:
    """Per-minute counts add up to requests and failures by cause, most first."""
    requests, shares = cause_shares(
        {1: {"req": 60, "c:stale_etag": 2}, 2: {"req": 40, "c:format_change": 6, "c:stale_etag": 1}}
    )
    assert requests == 100
    assert [(s.cause, s.count) for s in shares] == [("format_change", 6), ("stale_etag", 3)]
    assert shares[0].of_failures == pytest.approx(6 / 9)
    assert shares[0].of_requests == pytest.approx(0.06)


def test_deploy_rows_say_where_each_verdict_stands() -> None:
    """The first version has nothing to compare; a regression is named; the latest deploy is
    being judged for the watch period, then has no regression."""
    verdict = {"cause": "format_change", "baseline_ratio": 0.0, "ratio": 0.07, "detected_at": 9e8}
    deploys = [
        Deploy("v1", 1000.0, "events", ("S:hex32",), None),
        Deploy("v2", 2000.0, "marker", ("S:v{N}-hex16",), verdict),
        Deploy("v3", 3000.0, "events", (), None),
    ]
    rows = deploy_rows(deploys, newest=3100.0)
    assert [r.version for r in rows] == ["v3", "v2", "v1"]
    assert rows[0].verdict.startswith("being judged")
    assert rows[1].regressed and "7.00% after" in rows[1].verdict
    assert rows[2].verdict.startswith("first version")
    assert deploy_rows(deploys, newest=9000.0)[0].verdict == "no regression"


def test_evidence_rows_of_unstable_etags_name_the_values() -> None:
    """An unstable ETag's evidence lists the values the current ETag went through."""
    rows = evidence_rows("s", "o", {"values": ['"a"', '"b"'], "flips": 2})
    assert [(r.label, r.value) for r in rows] == [
        ("ETag values", '"a", then "b"'),
        ("Flips", "2 changes of the current ETag with no write in between"),
    ]


def test_evidence_rows_keep_unknown_facts() -> None:
    """Evidence the pages have no words for yet is still shown, by its key."""
    rows = evidence_rows("s", "o", {"retry_count": 2, "flip_flops": ["a", "b"]})
    assert [(r.label, r.value) for r in rows] == [
        ("Retries", "2 earlier 412s for the same If-Match from this client"),
        ("Flip flops", '["a", "b"]'),
    ]


def test_durations_read_in_the_right_unit() -> None:
    """Milliseconds, seconds, minutes and hours as on-call reads them."""
    assert [format_duration(s) for s in (0.25, 4.21, 360, 12600, None)] == [
        "250 ms",
        "4.2 s",
        "6 min",
        "3.5 h",
        "-",
    ]


# -- in a real headless Chromium --------------------------------------------------------------

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
# Screenshots are test artifacts; `make screenshots` points this at docs/img for the README.
SCREENSHOT_DIR = Path(os.environ.get("PW_SCREENSHOT_DIR", ROOT / "build" / "screenshots"))


def chromium(url: str, *args: str) -> str:
    """Run Chromium headless on `url` with a fresh profile; its stdout."""
    profile = tempfile.mkdtemp(prefix="pw-chromium-")
    try:
        result = subprocess.run(
            [find_binary("chromium"), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return result.stdout
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


@dataclass(frozen=True)
class DemoPages:
    base: str
    service: str
    resource: str
    request: str


@pytest.fixture(scope="module")
def demo_collector() -> Iterator[DemoPages]:
    """A real `serve` fed ten minutes of demo traffic (a deploy that changes the ETag format
    halfway), settled; the pages worth looking at."""
    port = free_port()
    env = {**os.environ, "PW_LOG_LEVEL": "warning", "PW_PORT": str(port)}
    env.pop("PW_REDIS_URL", None)
    server = subprocess.Popen([str(ROOT / ".venv/bin/precondition-watch"), "serve"], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{base}/readyz").status_code == 200, what="collector")
        config = demo.DemoConfig(start=time.time() - 610, duration=600, deploy_at=300, rate=12)
        events = demo.generate(config)
        lines = (orjson.dumps({k: v for k, v in e.items() if k != "demo_cause"}) for e in events)
        body = b"\n".join(lines)
        with httpx.Client(base_url=base, timeout=60) as http:
            assert http.post("/v1/events", content=body, headers=NDJSON).json()["rejected"] == []
            http.post("/v1/flush").raise_for_status()
            hot = http.get("/v1/services/orders/hot?window=3600").json()["resources"]
            resource = hot[0]["resource_id"]
            timeline = http.get(f"/v1/services/orders/resources/{resource}/timeline").json()
        changed = [e for e in timeline["events"] if e.get("cause") == "format_change"]
        assert changed, "the demo's deploy should change the ETag format on the hottest order"
        yield DemoPages(
            base,
            "/ui/services/orders",
            f"/ui/services/orders/resources/{resource}",
            f"/ui/services/orders/requests/{changed[0]['request_id']}",
        )
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("name", "testids", "size"),
    [
        ("service", ("verdict", "causes", "hot", "deploys"), (1280, 1250)),
        ("request", ("cause", "action", "evidence", "request", "timeline-strip"), (1280, 900)),
        ("resource", ("timeline-strip", "strip-legend", "events"), (1280, 760)),
    ],
)
def test_pages_render_in_chromium(
    demo_collector: DemoPages, name: str, testids: tuple[str, ...], size: tuple[int, int]
) -> None:
    """Chromium renders each drill-down page with its parts, and a screenshot is saved."""
    url = demo_collector.base + getattr(demo_collector, name)
    dom = parse_html(chromium(url, "--dump-dom"))
    for testid in testids:
        assert dom.find_all(data_testid=testid), f"{name} page has no {testid}"
    if name == "service":
        assert dom.one(data_testid="verdict").all_text().count("regression: ETag format") == 1
    else:
        strip = dom.one(data_testid="timeline-strip")
        kinds = {a.attrs["data-kind"] for a in strip.find_all("a")}
        assert {"write", "failure"} <= kinds
    if name == "request":
        assert dom.one(data_testid="cause").one("span").attrs["data-cause"] == "format_change"
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOT_DIR / f"ui-{name}.png"
    shot.unlink(missing_ok=True)
    chromium(url, f"--screenshot={shot}", f"--window-size={size[0]},{size[1]}")
    assert png_size(shot) == size
    assert shot.stat().st_size > 20_000  # a blank page is a few kB
