"""Tests for collector.etag: parsing, RFC comparison, proxy rewrites and format fingerprints."""

from __future__ import annotations

import base64
import random
import re
import string
import uuid
from collections.abc import Callable

import pytest

from collector.etag import (
    EntityTag,
    Precondition,
    RewriteKind,
    detect_rewrite,
    detect_rewrite_raw,
    fingerprint,
    is_high_entropy,
    parse_etag,
    parse_precondition,
    strong_match,
    weak_match,
)


def weak(opaque: str) -> EntityTag:
    return EntityTag(opaque, weak=True)


def strong(opaque: str) -> EntityTag:
    return EntityTag(opaque, weak=False)


# --- parse_etag ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('"abc"', EntityTag("abc", False)),
        ('W/"abc"', EntityTag("abc", True)),
        ('w/"abc"', EntityTag("abc", True)),
        ('""', EntityTag("", False)),
        ('  \t"abc" \r\n', EntityTag("abc", False)),
        ("abc", EntityTag("abc", False, quoted=False)),
        ("W/abc", EntityTag("abc", True, quoted=False)),
        ('"a b"', EntityTag("a b", False)),
        ('"abc"-gzip', EntityTag("abc-gzip", False)),
        ('W/"abc"--gzip', EntityTag("abc--gzip", True)),
        ('"abc"-br', EntityTag("abc-br", False)),
    ],
)
def test_parse_etag_accepts(raw: str, expected: EntityTag) -> None:
    """Strong, weak (any case of W/), unquoted, padded and outside-suffix tags are read."""
    assert parse_etag(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "*",
        "W/",
        "W/*",
        '"abc',
        'abc"',
        'ab"c',
        '"a"b"',
        "a b",
        "a,b",
        '"a\x01"',
        "a\x7f",
    ],
)
def test_parse_etag_rejects_junk(raw: str) -> None:
    """Empty values, '*', unbalanced quotes, control characters and spaced tokens give None."""
    assert parse_etag(raw) is None


def test_parse_etag_rejects_unknown_text_after_quotes() -> None:
    """Only known rewrite suffixes may follow the closing quote."""
    assert parse_etag('"abc"-foo') is None
    assert parse_etag('"abc" -gzip') is None


@pytest.mark.parametrize(
    ("tag", "wire"),
    [
        (EntityTag("abc", False), '"abc"'),
        (EntityTag("abc", True), 'W/"abc"'),
        (EntityTag("abc", False, quoted=False), '"abc"'),
        (EntityTag("abc", True, quoted=False), 'W/"abc"'),
    ],
)
def test_str_is_canonical_wire_form(tag: EntityTag, wire: str) -> None:
    """str() always renders the quoted form with an uppercase W/."""
    assert str(tag) == wire


# --- parse_precondition --------------------------------------------------------------------


def test_parse_precondition_none_means_absent() -> None:
    """No header is neither '*' nor malformed."""
    assert parse_precondition(None) == Precondition(any=False, tags=(), malformed=False)
    assert parse_precondition([]) == Precondition(any=False, tags=(), malformed=False)


@pytest.mark.parametrize("header", ["*", " * ", ["*"]])
def test_parse_precondition_star(header: str | list[str]) -> None:
    """'*' alone matches any representation."""
    assert parse_precondition(header) == Precondition(any=True, tags=(), malformed=False)


@pytest.mark.parametrize("header", ["", "   ", ",", " , ,\t", [""], ["", " , "]])
def test_parse_precondition_empty_is_malformed(header: str | list[str]) -> None:
    """A value with no element at all is malformed and has no tags."""
    assert parse_precondition(header) == Precondition(any=False, tags=(), malformed=True)


def test_parse_precondition_list_with_commas_inside_quotes() -> None:
    """Commas inside a quoted opaque do not split the list."""
    result = parse_precondition('"a,b", W/"c" ,"d"')
    assert result == Precondition(
        any=False, tags=(strong("a,b"), weak("c"), strong("d")), malformed=False
    )


def test_parse_precondition_ignores_empty_elements() -> None:
    """Empty list elements between tags are skipped (RFC 9110 section 5.6.1.2)."""
    result = parse_precondition(', "a",, "b" ,')
    assert result == Precondition(any=False, tags=(strong("a"), strong("b")), malformed=False)


def test_parse_precondition_joins_repeated_header_lines() -> None:
    """Several header lines are read as one list."""
    result = parse_precondition(['"a"', ' W/"b", "c"'])
    assert result.tags == (strong("a"), weak("b"), strong("c"))
    assert not result.malformed and not result.any


@pytest.mark.parametrize(
    ("header", "kept"),
    [
        ('"a", W/ "x", "b"', ("a", "b")),
        ('"a", b c, "b"', ("a", "b")),
        ('"a", *', ("a",)),
        (['"a"', '"broken', '"b"'], ("a", "b")),
    ],
)
def test_parse_precondition_keeps_valid_tags_beside_junk(
    header: str | list[str], kept: tuple[str, ...]
) -> None:
    """A bad element marks the value malformed without dropping the good tags."""
    result = parse_precondition(header)
    assert result.malformed
    assert not result.any
    assert tuple(t.opaque for t in result.tags) == kept


def test_parse_precondition_unbalanced_quote() -> None:
    """An unterminated quoted string is malformed."""
    result = parse_precondition('"abc')
    assert result == Precondition(any=False, tags=(), malformed=True)


def test_parse_precondition_keeps_unquoted_and_suffixed_tags() -> None:
    """Lenient forms survive list parsing with their flags."""
    result = parse_precondition('abc, "d"-gzip')
    assert result.tags == (EntityTag("abc", False, quoted=False), strong("d-gzip"))
    assert not result.malformed


# --- comparison ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "is_strong", "is_weak"),
    [
        (weak("1"), weak("1"), False, True),
        (weak("1"), weak("2"), False, False),
        (weak("1"), strong("1"), False, True),
        (strong("1"), strong("1"), True, True),
        (strong("1"), strong("2"), False, False),
    ],
)
def test_rfc9110_comparison_table(
    a: EntityTag, b: EntityTag, is_strong: bool, is_weak: bool
) -> None:
    """Strong and weak comparison follow the example table of RFC 9110 section 8.8.3.2."""
    assert strong_match(a, b) is is_strong
    assert strong_match(b, a) is is_strong
    assert weak_match(a, b) is is_weak
    assert weak_match(b, a) is is_weak


def test_unquoted_tag_never_matches_quoted_one() -> None:
    """The quotes are part of the opaque-tag the origin compares."""
    bare = EntityTag("abc", False, quoted=False)
    assert not strong_match(bare, strong("abc"))
    assert not weak_match(bare, strong("abc"))
    assert strong_match(bare, EntityTag("abc", False, quoted=False))


# --- detect_rewrite ------------------------------------------------------------------------

W, GZ, BR, GUN, UQ = (
    RewriteKind.WEAKENED,
    RewriteKind.SUFFIX_GZIP,
    RewriteKind.SUFFIX_BR,
    RewriteKind.SUFFIX_GUNZIP,
    RewriteKind.UNQUOTED,
)


@pytest.mark.parametrize(
    ("sent", "kinds"),
    [
        (weak("abc"), (W,)),
        (strong("abc-gzip"), (GZ,)),
        (strong("abc--gzip"), (GZ,)),
        (strong("abc-br"), (BR,)),
        (strong("abc-gunzip"), (GUN,)),
        (EntityTag("abc", False, quoted=False), (UQ,)),
        (weak("abc-gzip"), (W, GZ)),
        (weak("abc-br"), (W, BR)),
        (EntityTag("abc-gzip", True, quoted=False), (W, GZ, UQ)),
        (strong("abc-gzip-br"), (GZ, BR)),
        (strong("abc-br-gzip"), (GZ, BR)),
        (strong("abc-gzip-gzip"), (GZ,)),
    ],
)
def test_detect_rewrite_kinds(sent: EntityTag, kinds: tuple[RewriteKind, ...]) -> None:
    """Each known transform, alone or stacked, is undone and reported in enum order."""
    assert detect_rewrite(sent, strong("abc")) == kinds


def test_detect_rewrite_suffix_belongs_to_origin() -> None:
    """An origin tag that itself ends like a suffix is anchored on, not stripped."""
    assert detect_rewrite(strong("abc-br"), strong("abc-br")) is None
    assert detect_rewrite(strong("abc-br-gzip"), strong("abc-br")) == (GZ,)
    assert detect_rewrite(strong("abc"), strong("abc-br")) is None


@pytest.mark.parametrize(
    ("raw", "kinds"),
    [
        ('"abc"-gzip', (GZ,)),
        ('"abc"--gzip', (GZ,)),
        ('"abc"-br', (BR,)),
        ('"abc"-gunzip', (GUN,)),
        ('W/"abc"-gzip', (W, GZ)),
        ('W/"abc-gzip"', (W, GZ)),
        (" abc ", (UQ,)),
    ],
)
def test_detect_rewrite_raw_outside_quotes(raw: str, kinds: tuple[RewriteKind, ...]) -> None:
    """A suffix appended after the closing quote is recognised from the raw header text."""
    assert detect_rewrite_raw(raw, strong("abc")) == kinds


def test_outside_suffix_is_also_seen_by_detect_rewrite() -> None:
    """parse_etag keeps the outside suffix, so the parsed tag alone is enough."""
    sent = parse_etag('"abc"-gzip')
    assert sent is not None
    assert not strong_match(sent, strong("abc"))
    assert detect_rewrite(sent, strong("abc")) == (GZ,)


@pytest.mark.parametrize(
    ("sent", "current"),
    [
        (strong("abc"), strong("abd")),
        (strong("abc"), strong("abc")),
        (weak("abd"), strong("abc")),
        (strong("abc-zip"), strong("abc")),
        (strong("abcgzip"), strong("abc")),
        (strong("xabc-gzip"), strong("abc")),
        (strong("ab"), strong("abc")),
        (strong("abc"), EntityTag("abc", False, quoted=False)),
        (EntityTag("abc", False, quoted=False), EntityTag("abc", False, quoted=False)),
    ],
)
def test_detect_rewrite_no_false_positive(sent: EntityTag, current: EntityTag) -> None:
    """Different tags, equal tags and unknown transforms are not rewrites."""
    assert detect_rewrite(sent, current) is None


@pytest.mark.parametrize("sent", [weak("abc"), strong("abc"), strong("abc-gzip"), weak("x")])
def test_detect_rewrite_weak_origin(sent: EntityTag) -> None:
    """A weak current ETag is the weak-origin cause, never a rewrite."""
    assert detect_rewrite(sent, weak("abc")) is None


def test_detect_rewrite_raw_junk() -> None:
    """Unreadable raw text is not a rewrite."""
    assert detect_rewrite_raw('"abc', strong("abc")) is None
    assert detect_rewrite_raw("", strong("abc")) is None


# --- fingerprint ---------------------------------------------------------------------------

Generator = Callable[[random.Random], str]


def _b64(rng: random.Random, n: int, urlsafe: bool = False, pad: bool = True) -> str:
    raw = rng.randbytes(n)
    text = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(raw).decode()
    return text if pad else text.rstrip("=")


GENERATORS: dict[str, Generator] = {
    "md5_hex": lambda r: f"{r.getrandbits(128):032x}",
    "sha1_hex": lambda r: f"{r.getrandbits(160):040x}",
    "sha256_hex": lambda r: f"{r.getrandbits(256):064x}",
    "sha256_b64": lambda r: _b64(r, 32, urlsafe=r.random() < 0.5, pad=r.random() < 0.5),
    "md5_b64": lambda r: _b64(r, 16, pad=r.random() < 0.5),
    "nginx": lambda r: f"{r.randint(0, 10**7):x}-{r.randint(10**8, 2 * 10**9):x}",
    "apache3": lambda r: "-".join(f"{r.getrandbits(b):x}" for b in (20, 16, 52)),
    "counter": lambda r: str(r.randint(0, 10**6)),
    "v_prefixed": lambda r: f"v{r.randint(0, 500)}-{r.getrandbits(16):x}",
    "n_hex32": lambda r: f"{r.randint(0, 99999)}-{r.getrandbits(128):032x}",
    "uuid": lambda r: str(uuid.UUID(int=r.getrandbits(128))),
}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_fingerprint_same_generator_same_fingerprint(name: str) -> None:
    """Many tags from one generator with different content share one fingerprint."""
    rng = random.Random(f"etag-{name}")
    opaques = {GENERATORS[name](rng) for _ in range(300)}
    assert len(opaques) > 100
    assert len({fingerprint(strong(o)) for o in opaques}) == 1


def test_fingerprint_generators_pairwise_distinct() -> None:
    """Different generators never share a fingerprint."""
    rng = random.Random(412)
    prints = {name: fingerprint(strong(gen(rng))) for name, gen in GENERATORS.items()}
    assert len(set(prints.values())) == len(prints), prints


@pytest.mark.parametrize(
    ("opaque", "expected"),
    [
        ("9e107d9d372bb6826bd81d3542a419d6", "S:hex32"),
        ("2fd4e1c67a2d28fced849ee1bb76e7391b93eb12", "S:hex40"),
        ("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=", "S:b64-44"),
        ("47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU", "S:b64-44"),
        ("1B2M2Y8AsgTpgAmY7PhCfg", "S:b64-22"),
        ("5f3e-1a2b3c", "S:x-x"),
        ("3a-64f1b2c9", "S:x-x"),
        ("2b-5f3e1a2b3c4d5", "S:x-x"),
        ("2b-5f3e-1a2b3c4d5", "S:x-x-x"),
        ("1", "S:N"),
        ("12345", "S:N"),
        ("v5-d4f8", "S:v{N}-x"),
        ("v12-a0b1", "S:v{N}-x"),
        ("7-9e107d9d372bb6826bd81d3542a419d6", "S:x-hex32"),
        ("123e4567-e89b-12d3-a456-426614174000", "S:uuid"),
        ("9e107d9d372bb6826bd81d3542a419d6-gzip", "S:hex32-gzip"),
        ("1.2.3", "S:x:x:x"),
        ("", "S:empty"),
    ],
)
def test_fingerprint_examples(opaque: str, expected: str) -> None:
    """Known generators render the documented shapes."""
    assert fingerprint(strong(opaque)) == expected


def test_fingerprint_includes_weakness_and_quoting() -> None:
    """W/"x", "x" and bare x have three different fingerprints."""
    opaque = "9e107d9d372bb6826bd81d3542a419d6"
    prints = {
        fingerprint(EntityTag(opaque, False)),
        fingerprint(EntityTag(opaque, True)),
        fingerprint(EntityTag(opaque, False, quoted=False)),
        fingerprint(EntityTag(opaque, True, quoted=False)),
    }
    assert len(prints) == 4
    assert fingerprint(EntityTag(opaque, True)) == "W:hex32"
    assert fingerprint(EntityTag(opaque, False, quoted=False)) == "S:u:hex32"


def test_fingerprint_buckets_unstructured_lengths() -> None:
    """Long opaques with no structure get a length class, not their exact length."""
    assert fingerprint(strong("a" * 20 + "0b")) == fingerprint(strong("c1" * 14))
    assert fingerprint(strong("Ab" * 30)) == fingerprint(strong("Cd" * 31))


FINGERPRINT_CHARS = re.compile(r"[A-Za-z0-9:{}_/-]+")


def test_fingerprint_charset_and_length() -> None:
    """Fingerprints are short, use a fixed alphabet, and never echo the opaque."""
    rng = random.Random(9110)
    alphabets = [
        string.hexdigits,
        string.ascii_letters + string.digits + "-_./:",
        string.printable.replace('"', ""),
        "aé€😀-._~!$&'()*+;=@",
    ]
    for _ in range(2000):
        alphabet = rng.choice(alphabets)
        opaque = "".join(rng.choice(alphabet) for _ in range(rng.randint(6, 300)))
        for tag in (EntityTag(opaque, False), EntityTag(opaque, True, quoted=False)):
            fp = fingerprint(tag)
            assert len(fp) <= 40, fp
            assert FINGERPRINT_CHARS.fullmatch(fp), fp
            assert opaque not in fp


def test_fingerprint_long_structure_is_cut_stably() -> None:
    """Very long structured opaques are truncated the same way every time."""
    a = fingerprint(strong("-".join(["ab"] * 40)))
    b = fingerprint(strong("-".join(["cd"] * 40)))
    assert a == b
    assert len(a) <= 40


# --- is_high_entropy -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("opaque", "expected"),
    [
        ("0", False),
        ("17", False),
        ("v3", False),
        ("1700000000000000000", False),
        ("5f3e-1a2b3c", False),
        ("0123456789abcdef", True),
        ("9e107d9d372bb6826bd81d3542a419d6", True),
        ("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=", True),
        ("123e4567-e89b-12d3-a456-426614174000", True),
    ],
)
def test_is_high_entropy(opaque: str, expected: bool) -> None:
    """Only 16+ character opaques that are not pure numbers count as distinctive."""
    assert is_high_entropy(strong(opaque)) is expected
    assert is_high_entropy(weak(opaque)) is expected


@pytest.mark.parametrize(
    "value", ['"abc"', 'W/"x y"', ' "a,b" ', '""', 'w/"q"\t', '"a"-gzip', '"a", "b"', "abc"]
)
def test_single_tag_shortcut_matches_the_list_grammar(value: str) -> None:
    """The one-quoted-tag shortcut gives what the general parser gives."""
    from collector.etag import _parse_header, _parse_values

    assert _parse_header(value) == _parse_values([value])


def test_the_lowercase_hex_shortcut_gives_the_general_shape() -> None:
    """`_shape` skips its regular expressions for lowercase hex; the answer is the same."""
    import random

    from collector.etag import _any_shape, _shape

    rng = random.Random(5)
    for n in [*range(1, 70), 128, 256, 300, 1500]:
        for alphabet in ("0123456789abcdef", "abcdef", "0123456789"):
            opaque = "".join(rng.choice(alphabet) for _ in range(n))
            assert _shape(opaque) == _any_shape(opaque), opaque
