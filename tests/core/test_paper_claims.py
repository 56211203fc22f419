"""The committed list of refuted paper claims is the one docs/checks.md shows."""

from __future__ import annotations

import re
from pathlib import Path

from noiseprobe.core.paper_claims import PAPER_CLAIMS
from noiseprobe.experiments import REGISTRY

DOC = Path(__file__).resolve().parents[2] / "docs" / "checks.md"


def test_docs_table_equals_the_committed_list():
    section = DOC.read_text(encoding="utf-8").split("## Paper claims refuted in docs/theory")[1]
    rows = re.findall(r"^\| `([^`]+)` \| (.+) \|$", section, flags=re.M)
    assert dict(rows) == PAPER_CLAIMS


def test_every_listed_claim_names_a_registered_experiment_and_a_theory_section():
    """The section itself is checked to exist by tests/test_docs_theory.py (this module's source cites it)."""
    for key, where in PAPER_CLAIMS.items():
        exp, _, check = key.partition("/")
        assert exp in REGISTRY and check, key
        assert where.startswith("docs/theory/") and "§" in where, key
