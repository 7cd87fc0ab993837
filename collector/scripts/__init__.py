"""The store's Lua scripts, one `.lua` file each; `lib.lua` holds the helpers some of them use.

Each script's header says what its KEYS and ARGV are and what it returns. A script is given one
key per resource (its `e`) or service (its `p` or `i`) and derives the sibling keys by suffix:
they share the hash tag, so they live in the same cluster slot.
"""

from __future__ import annotations

from importlib import resources

# The scripts that call lib.lua's `split`: it is prepended to them.
_USE_LIB = frozenset({"lookup"})
NAMES = ("expire", "trim", "claim", "count", "lookup")


def _text(name: str) -> str:
    return resources.files(__package__).joinpath(f"{name}.lua").read_text()


def load() -> dict[str, str]:
    """Every script's source by name."""
    lib = _text("lib")
    return {name: (lib + _text(name) if name in _USE_LIB else _text(name)) for name in NAMES}
