"""The README is the user's manual: it documents every setting."""

from __future__ import annotations

import re

from collector.settings import Settings
from tests.conftest import ROOT


def test_every_setting_is_in_the_configuration_table() -> None:
    """Each PW_* variable has a row in the README's configuration table, and no stale ones."""
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `(PW_[A-Z_]+)` \|", readme, flags=re.MULTILINE))
    expected = {f"PW_{name.upper()}" for name in Settings.model_fields}
    assert documented == expected
