"""Entity tags (RFC 9110 8.8.3): parsing, comparison, proxy rewrites, format fingerprints."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "EntityTag",
    "Precondition",
    "RewriteKind",
    "detect_rewrite",
    "detect_rewrite_raw",
    "fingerprint",
    "is_high_entropy",
    "parse_etag",
    "parse_precondition",
    "strong_match",
    "weak_match",
]

# Optional whitespace around a field value or list element; CR/LF too, since log shippers keep them.
_OWS = " \t\r\n"


@dataclass(frozen=True, slots=True)
class EntityTag:
    """One entity tag; `opaque` excludes the DQUOTEs, `quoted` is False for a bare token."""

    opaque: str
    weak: bool
    quoted: bool = True

    def __str__(self) -> str:
        return f'{"W/" if self.weak else ""}"{self.opaque}"'


@dataclass(frozen=True, slots=True)
class Precondition:
    """A parsed If-Match / If-None-Match value: `*`, a list of tags, or something unreadable."""

    any: bool
    tags: tuple[EntityTag, ...]
    malformed: bool


class RewriteKind(StrEnum):
    """A transform an intermediary applied to an ETag; the declaration order is the report order."""

    WEAKENED = "weakened"
    SUFFIX_GZIP = "suffix_gzip"
    SUFFIX_BR = "suffix_br"
    SUFFIX_GUNZIP = "suffix_gunzip"
    UNQUOTED = "unquoted"


# Suffixes proxies append (nginx/Apache mod_deflate, CDNs). No suffix is a prefix of another, so
# a tail made of them splits in exactly one way.
_SUFFIXES: dict[str, RewriteKind] = {
    "--gzip": RewriteKind.SUFFIX_GZIP,
    "-gzip": RewriteKind.SUFFIX_GZIP,
    "-br": RewriteKind.SUFFIX_BR,
    "-gunzip": RewriteKind.SUFFIX_GUNZIP,
}


def _split_suffixes(tail: str) -> list[RewriteKind] | None:
    """The rewrite kinds `tail` is made of, in order, or None when it is anything else."""
    kinds: list[RewriteKind] = []
    while tail:
        for suffix, kind in _SUFFIXES.items():
            if tail.startswith(suffix):
                kinds.append(kind)
                tail = tail[len(suffix) :]
                break
        else:
            return None
    return kinds


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _has_control(text: str) -> bool:
    return _CONTROL.search(text) is not None


@functools.lru_cache(maxsize=8192)  # a hot resource's current ETag is read by every failure
def parse_etag(value: str) -> EntityTag | None:
    """Read one ETag leniently; None for empty, `*` or junk.

    A rewrite suffix a proxy put after the closing quote (`"abc"-gzip`) is folded into the opaque
    (`abc-gzip`): the origin compared those bytes and they differ from `"abc"`, so the tag must
    not match `"abc"`, while `detect_rewrite` still recognises the suffix.
    """
    text = value.strip(_OWS)
    # RFC 9110 says "W/" exactly; lowercase "w/" shows up in the wild and means the same.
    weak = text[:2] in ("W/", "w/")
    if weak:
        text = text[2:]
    if not text:
        return None
    if text.startswith('"'):
        close = text.find('"', 1)
        if close < 0:
            return None
        opaque, tail = text[1:close], text[close + 1 :]
        # Spaces inside the quotes are invalid per the RFC but unambiguous, so they are kept.
        if _has_control(opaque) or (tail and _split_suffixes(tail) is None):
            return None
        return EntityTag(opaque + tail, weak)
    if text == "*" or any(c in '",' or c.isspace() for c in text) or _has_control(text):
        return None
    return EntityTag(text, weak, quoted=False)


def _split_list(value: str) -> list[str]:
    """Split a header value on the commas that are outside quoted strings."""
    if "," not in value:  # one tag, by far the most common value
        return [value]
    parts: list[str] = []
    start = 0
    in_quotes = False
    for i, c in enumerate(value):
        if c == '"':
            in_quotes = not in_quotes
        elif c == "," and not in_quotes:
            parts.append(value[start:i])
            start = i + 1
    parts.append(value[start:])
    return parts


def parse_precondition(header: str | Sequence[str] | None) -> Precondition:
    """Parse an If-Match / If-None-Match value, or the values of repeated header lines."""
    if header is None:
        return _NO_PRECONDITION
    if isinstance(header, str):
        # Settling reads one failure's If-Match several times; the result is immutable.
        return _parse_header(header)
    return _parse_values(list(header))


_NO_PRECONDITION = Precondition(any=False, tags=(), malformed=False)


# One quoted tag, as nearly every client sends: parsed without the general list grammar.
_SINGLE_TAG = re.compile(r'[ \t]*(W/|w/)?"([^"\x00-\x1f\x7f]*)"[ \t]*')


@functools.lru_cache(maxsize=4096)
def _parse_header(header: str) -> Precondition:
    single = _SINGLE_TAG.fullmatch(header)
    if single is not None:
        tag = EntityTag(single.group(2), single.group(1) is not None)
        return Precondition(any=False, tags=(tag,), malformed=False)
    return _parse_values([header])


def _parse_values(values: list[str]) -> Precondition:
    if not values:
        return Precondition(any=False, tags=(), malformed=False)
    # Each line is split on its own, so an unbalanced quote on one line cannot swallow the next.
    elements = [e.strip(_OWS) for v in values for e in _split_list(v)]
    # RFC 9110 section 5.6.1.2: empty list elements are ignored, but a value with nothing else
    # in it is not a precondition.
    elements = [e for e in elements if e]
    if not elements:
        return Precondition(any=False, tags=(), malformed=True)
    if elements == ["*"]:
        return Precondition(any=True, tags=(), malformed=False)
    tags: list[EntityTag] = []
    malformed = False
    for element in elements:
        tag = parse_etag(element)
        if tag is None:
            malformed = True  # includes a "*" mixed with tags, which the RFC does not allow
        else:
            tags.append(tag)
    return Precondition(any=False, tags=tuple(tags), malformed=malformed)


def strong_match(a: EntityTag, b: EntityTag) -> bool:
    """RFC 9110 strong comparison: both strong and the same opaque-tag.

    The quoting is part of the opaque-tag on the wire, so a bare `abc` never matches `"abc"`.
    """
    return not a.weak and not b.weak and a.opaque == b.opaque and a.quoted == b.quoted


def weak_match(a: EntityTag, b: EntityTag) -> bool:
    """RFC 9110 weak comparison: the same opaque-tag, whatever the weak flags."""
    return a.opaque == b.opaque and a.quoted == b.quoted


def detect_rewrite(sent: EntityTag, current: EntityTag) -> tuple[RewriteKind, ...] | None:
    """The intermediary transforms that turn `current` into `sent`, or None.

    None when `current` is weak (a weak origin is its own cause), when `sent` already matches
    strongly, or when undoing weakening, suffixes and quote stripping cannot make them equal.
    """
    if current.weak or strong_match(sent, current):
        return None
    kinds: set[RewriteKind] = set()
    if sent.weak:
        kinds.add(RewriteKind.WEAKENED)
    if sent.quoted != current.quoted:
        if current.quoted:
            kinds.add(RewriteKind.UNQUOTED)
        else:
            return None  # nobody adds quotes to a bare origin tag
    if not sent.opaque.startswith(current.opaque):
        return None
    suffixes = _split_suffixes(sent.opaque[len(current.opaque) :])
    if suffixes is None:
        return None
    kinds.update(suffixes)
    return tuple(kind for kind in RewriteKind if kind in kinds) or None


def detect_rewrite_raw(sent_raw: str, current: EntityTag) -> tuple[RewriteKind, ...] | None:
    """`detect_rewrite` for the raw If-Match text, e.g. `"abc"-gzip` with the suffix outside."""
    # parse_etag keeps a suffix found after the closing quote in the opaque, which is all the
    # outside-the-quotes case needs.
    sent = parse_etag(sent_raw)
    return None if sent is None else detect_rewrite(sent, current)


# --- format fingerprints -------------------------------------------------------------------

_MAX_FINGERPRINT = 40
_HASH_LENGTHS = frozenset({16, 32, 40, 64})  # xxh64/md5/sha1/sha256 hex digests
_B64_CLASSES = {22: "22", 27: "27", 43: "44", 86: "86"}  # unpadded md5/sha1/sha256/sha512
_KNOWN_WORDS = frozenset({"gzip", "br", "gunzip", "deflate", "zstd"})
_SEPARATOR_SHAPES = {"-": "-", "_": "_", ":": ":", "/": "/", ".": ":"}

_DIGITS = re.compile(r"[0-9]+")
_HEX = re.compile(r"[0-9a-f]+|[0-9A-F]+")
_LETTERS_N = re.compile(r"([A-Za-z]{1,3})[0-9]+")
_ALNUM = re.compile(r"[A-Za-z0-9]+")
_UUID = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
_LOWER_HEX = "0123456789abcdef"
_B64 = re.compile(r"[A-Za-z0-9+/_-]+=*")
_SEPARATORS = re.compile(r"([-_.:/])")
_UPPER = re.compile(r"[A-Z]")
_LOWER = re.compile(r"[a-z]")


def _bucket(n: int) -> str:
    """A power-of-two length class, so lengths that vary a little share one fingerprint."""
    size = 16
    while size < n and size < 1024:
        size *= 2
    return f"le{size}" if n <= size else "big"


def _looks_base64(opaque: str) -> bool:
    # Lowercase structured tags (nginx "5f3e-1a2b3c", "v5-d4f8") fit the url-safe alphabet too;
    # real base64 of 16+ characters almost surely has both letter cases, padding or a '+'.
    if len(opaque) < 16 or not _B64.fullmatch(opaque):
        return False
    has_both = _UPPER.search(opaque) is not None and _LOWER.search(opaque) is not None
    return has_both or "+" in opaque or "=" in opaque


def _segment_shape(segment: str, alone: bool) -> str:
    n = len(segment)
    if not segment:
        return ""
    if _DIGITS.fullmatch(segment):
        if n in _HASH_LENGTHS and n != 16:
            return f"hex{n}"  # a digest that happens to have no letter
        # Alone it is a counter; short inside a structure it may be hex with no letter in it.
        return "N" if alone or n >= 16 else "x"
    if _HEX.fullmatch(segment):
        if n < 16:
            return "x"
        name = "HEX" if _UPPER.search(segment) else "hex"
        return f"{name}{n}" if n in _HASH_LENGTHS else f"{name}{_bucket(n)}"
    letters_n = _LETTERS_N.fullmatch(segment)
    if letters_n:
        return f"{letters_n.group(1)}{{N}}"
    if segment.isascii() and segment.isalpha():
        return segment.lower() if segment.lower() in _KNOWN_WORDS else "a"
    if _ALNUM.fullmatch(segment):
        return "an" if n < 16 else f"an{_bucket(n)}"
    return "o"


def _shape(opaque: str) -> str:
    if not opaque:
        return "empty"
    if not opaque.strip(_LOWER_HEX) and not opaque.isdigit():
        # Lowercase hex with a letter, the commonest ETag (a digest): what the general path
        # below concludes, without its regular expressions (settling asks for every tag).
        n = len(opaque)
        if n < 16:
            return "x"
        return f"hex{n}" if n in _HASH_LENGTHS else f"hex{_bucket(n)}"
    return _any_shape(opaque)


def _any_shape(opaque: str) -> str:
    if _UUID.fullmatch(opaque):
        return "uuid"
    if _looks_base64(opaque):
        n = len(opaque.rstrip("="))
        return f"b64-{_B64_CLASSES.get(n) or _bucket(n)}"
    parts = _SEPARATORS.split(opaque)  # segments at even indexes, separators at odd ones
    if len(parts) == 1:
        return _segment_shape(opaque, alone=True)
    return "".join(
        _SEPARATOR_SHAPES[p] if i % 2 else _segment_shape(p, alone=False)
        for i, p in enumerate(parts)
    )


@functools.lru_cache(maxsize=8192)
def fingerprint(tag: EntityTag) -> str:
    """A short description of the ETag's format, equal for tags from the same generator.

    `S:`/`W:` for strong/weak, `u:` when unquoted, then the shape: `N` (decimal counter), `x`
    (short hex or decimal segment), `hex32`, `b64-44`, `uuid`, `v{N}`, ... with the separators
    kept ('.' shown as ':'). At most 40 characters of [A-Za-z0-9:{}_/-], never the opaque.
    """
    prefix = ("W:" if tag.weak else "S:") + ("" if tag.quoted else "u:")
    shape = _shape(tag.opaque)
    if len(prefix) + len(shape) > _MAX_FINGERPRINT:
        # A long structure is cut; the same generator still cuts it at the same place.
        shape = shape[: _MAX_FINGERPRINT - len(prefix) - len("{etc}")] + "{etc}"
    return prefix + shape


def is_high_entropy(tag: EntityTag) -> bool:
    """True when one ETag on two resources cannot be a coincidence: 16+ chars, not a number."""
    return len(tag.opaque) >= 16 and not _DIGITS.fullmatch(tag.opaque)
