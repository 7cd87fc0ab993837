"""Personal data: with PW_RESOURCE_ID_KEY, resource ids are kept only as a keyed hash.

Resource ids are often personal data (a user, an account, an email address). With a key set,
each event's resource id is replaced by `h:` and the first 16 bytes of its HMAC-SHA256, in hex,
where events are parsed for storage (`collector.ingest.parse_records`), so Redis, the API and
the drill-down pages only ever see the hash (metrics and their exemplars never carry resource
ids at all). The key makes the hash unguessable:
without it, hashing every plausible id (order numbers, emails) would reverse a plain hash.
Lookups take the raw id, which is hashed the same way, or the hashed form as the API returned
it. The mode is decided once, by `resource_ids(settings)`.
"""

from __future__ import annotations

import hmac
import re
from typing import Protocol

from collector.settings import Settings

PREFIX = "h:"
DIGEST_BYTES = 16  # 128 bits: no two resources of a retention collide
_HASHED = re.compile(rf"{PREFIX}[0-9a-f]{{{DIGEST_BYTES * 2}}}")


class ResourceIds(Protocol):
    """How resource ids are stored, and how a requested one is found."""

    def stored(self, resource_id: str) -> str:
        """The form of an event's resource id that is stored."""
        ...

    def lookup(self, given: str) -> str:
        """The stored form of a resource id a request names."""
        ...


class PlainIds:
    """No key: resource ids are stored as the services sent them."""

    def stored(self, resource_id: str) -> str:
        return resource_id

    def lookup(self, given: str) -> str:
        return given


class HashedIds:
    """A key: resource ids are stored as `h:` + 32 hex digits of their HMAC-SHA256."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def stored(self, resource_id: str) -> str:
        if not resource_id:
            return resource_id  # an event without a resource names nobody
        # hmac.digest is the one-shot C path: a third of the cost of an hmac.new object.
        digest = hmac.digest(self._key, resource_id.encode(), "sha256")
        return PREFIX + digest[:DIGEST_BYTES].hex()

    def lookup(self, given: str) -> str:
        # A hashed id (from the API, a page's link, an exemplar) is already the stored form.
        return given if is_hashed(given) else self.stored(given)


def is_hashed(resource_id: str) -> bool:
    """Whether `resource_id` has the form of a hashed id."""
    return _HASHED.fullmatch(resource_id) is not None


def resource_ids(settings: Settings) -> ResourceIds:
    """Hashed ids when PW_RESOURCE_ID_KEY is set, else plain ones."""
    if settings.resource_id_key is None:
        return PlainIds()
    return HashedIds(settings.resource_id_key.get_secret_value().encode())
