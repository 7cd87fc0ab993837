"""How each cause and ETag rewrite is shown to on-call: its words, what to do, its colour.

One table for every place a cause is shown: the drill-down pages and the Grafana dashboards
(which take their series colours from here, so a cause has the same colour everywhere). The
words follow DESIGN.md's causes table. `kind` sorts causes into what on-call reads them as:
`healthy` (concurrency control working), `client` (a client's behaviour), `systemic` (the
service, its proxies or a deploy: an incident) and `other`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["healthy", "client", "systemic", "other"]


@dataclass(frozen=True, slots=True)
class CauseText:
    """What a cause means and what on-call does about it."""

    title: str
    meaning: str
    action: str
    colour: str  # a hex colour; Grafana overrides accept it as it is
    kind: Kind


# Ordered as on-call should read a breakdown: incidents first, healthy concurrency last.
CAUSES: dict[str, CauseText] = {
    "format_change": CauseText(
        "ETag format changed by a deploy",
        "The client sent an ETag in the format of an earlier version of the service; the version "
        "that answered computes ETags differently, so no ETag from before the deploy can match.",
        "Roll back, or make the new version accept both formats; clients must refetch.",
        "#E24D42",
        "systemic",
    ),
    "unstable_etag": CauseText(
        "Unstable ETag",
        "The resource's ETag changed with no write in between (back and forth, or away from "
        "the newest write's): replicas (or serialisations) compute different ETags for the "
        "same state.",
        "Make ETags deterministic: derive them from the stored version, not from inode, bytes "
        "or replica.",
        "#890F02",
        "systemic",
    ),
    "proxy_rewrite": CauseText(
        "ETag rewritten by a proxy",
        "The If-Match equals the current ETag once an intermediary's rewrite is undone (a W/ "
        "prefix, a -gzip or -br suffix, stripped quotes): the client never saw the real ETag.",
        "Fix the proxy or CDN (nginx gzip, Apache DeflateAlterETag, Cloudflare, CloudFront, "
        "Varnish) so it passes ETags through unchanged.",
        "#EF843C",
        "systemic",
    ),
    "weak_etag": CauseText(
        "Weak ETag on a writable resource",
        "The current ETag is weak (W/...): If-Match uses strong comparison, which a weak ETag "
        "can never pass.",
        "The origin must emit strong ETags on resources that clients write.",
        "#C15C17",
        "systemic",
    ),
    "missing_precondition": CauseText(
        "No precondition sent (428)",
        "The service requires a precondition and the client sent neither If-Match nor "
        "If-None-Match.",
        "The integration must adopt read-then-write: read the ETag, send it as If-Match.",
        "#EAB839",
        "client",
    ),
    "cross_resource": CauseText(
        "ETag of another resource",
        "The If-Match is (or recently was) the ETag of a different resource of this service, "
        "never of this one.",
        "A client caches ETags under the wrong key; find it by client id.",
        "#705DA0",
        "client",
    ),
    "blind_retry": CauseText(
        "Blind retry",
        "The same client already got a 412 for the same resource and the same If-Match within "
        "the concurrency window, and sent it again without refetching.",
        "The client retries without refetching: it must GET the resource again before retrying.",
        "#BA43A9",
        "client",
    ),
    "stale_etag": CauseText(
        "Stale ETag",
        "The If-Match was superseded longer ago than the concurrency window, or is an ETag of "
        "the current format this resource never had.",
        "Stale tabs or caches: check the clients' cache invalidation.",
        "#6ED0E0",
        "client",
    ),
    "resource_gone": CauseText(
        "Resource gone",
        "If-Match: * failed: the resource no longer exists.",
        "Usually a client editing something deleted meanwhile; check who deletes it.",
        "#508642",
        "other",
    ),
    "create_conflict": CauseText(
        "Create conflict",
        "If-None-Match: * failed: the resource already exists.",
        "A create race between clients; nothing, unless the rate spikes.",
        "#7EB26D",
        "other",
    ),
    "business_conflict": CauseText(
        "Business conflict (409)",
        "A 409 without If-Match or current ETag: a state conflict of the application, not a "
        "stale validator.",
        "Application logic: read the reason the service logged.",
        "#8E8E8E",
        "other",
    ),
    "unknown": CauseText(
        "Unknown",
        "Not enough evidence to decide.",
        "Send the successful writes too, with their ETags, so the collector sees each "
        "resource's lineage.",
        "#C7C7C7",
        "other",
    ),
    "concurrent_write": CauseText(
        "Concurrent write",
        "The If-Match was a real ETag of this resource, superseded by another request's write "
        "shortly before: concurrency control doing its job.",
        "Nothing, unless the rate spikes: then look at the hot resources.",
        "#1F78C1",
        "healthy",
    ),
}

PENDING_COLOUR = "#FFFFFF"  # not decided yet: drawn hollow
WRITE_COLOUR = "#464C54"

# How `precondition_etag_rewrites_total{kind}` and a proxy_rewrite's evidence name rewrites.
REWRITES: dict[str, str] = {
    "weakened": "a W/ prefix was added (the ETag was made weak)",
    "suffix_gzip": "a -gzip suffix was appended (nginx gzip, Apache mod_deflate)",
    "suffix_br": "a -br suffix was appended (Brotli compression)",
    "suffix_gunzip": "a -gunzip suffix was appended (nginx gunzip)",
    "unquoted": "the quotes were stripped",
}


def describe_cause(cause: str | None) -> CauseText:
    """The text of a cause; a cause this table does not know yet still renders."""
    if cause is None:
        return CauseText(
            "Pending",
            "Not classified yet: it waits until its service's watermark passes it, so a "
            "competing write that arrives a few seconds late still counts.",
            "Reload in a few seconds.",
            PENDING_COLOUR,
            "other",
        )
    known = CAUSES.get(cause)
    if known is not None:
        return known
    return CauseText(
        cause, "A cause this version of the pages has no words for.", "", "#999999", "other"
    )
