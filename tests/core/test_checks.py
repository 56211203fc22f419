"""Checks decide their own verdict from numbers: the one pass rule, verdicts, refuted paper claims."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from noiseprobe.core import paper_claims
from noiseprobe.core.checks import Check, Z, headline, is_ok, resolve

finite = st.floats(-1e6, 1e6, allow_nan=False)
nonneg = st.floats(0, 1e3, allow_nan=False)


@given(finite, finite, nonneg, nonneg)
def test_close_is_the_documented_rule(m, e, tol, se):
    c = Check.close("k", "c", m, e, atol=tol, se=se)
    assert c.passed == (abs(m - e) <= tol + Z * se)
    r = Check.close("k", "c", m, e, rtol=0.1, se=se)
    assert r.passed == (abs(m - e) <= 0.1 * abs(e) + Z * se)


@given(finite, st.floats(1e-3, 1e3), st.floats(1, 10), nonneg)
def test_factor_rule(m, e, f, se):
    assert Check.close("k", "c", m, e, factor=f, se=se).passed == (e / f - Z * se <= m <= e * f + Z * se)


@given(finite, finite, nonneg)
def test_bounds(m, b, se):
    assert Check.less("k", "c", m, b, se=se).passed == (m <= b + Z * se)
    assert Check.greater("k", "c", m, b, se=se).passed == (m >= b - Z * se)
    lo, hi = sorted((b, b + 1.0))
    assert Check.within("k", "c", m, lo, hi, se=se).passed == (lo - Z * se <= m <= hi + Z * se)


def test_tolerance_prints_both_terms():
    c = Check.close("k", "c", 1.0, 1.0, atol=0.01, se=0.002)
    assert c.tolerance == "±(0.01 + 4×0.002)"
    assert Check.close("k", "c", 1.0, 1.0, factor=1.5).tolerance == "factor 1.5"


def test_ordered_with_standard_errors():
    assert Check.ordered("k", "c", [1, 2, 3]).passed
    assert not Check.ordered("k", "c", [1, 3, 2]).passed
    assert Check.ordered("k", "c", [1, 3, 2.9], se=[0.1, 0.1, 0.1]).passed  # a dip of 1 se is noise
    assert not Check.ordered("k", "c", [1, 3, 2], se=[0.1, 0.1, 0.1]).passed
    assert Check.ordered("k", "c", [3, 2, 1], increasing=False).passed


@pytest.mark.parametrize("bad", [math.nan, math.inf, None, "x"])
def test_non_finite_measured_is_not_measurable(bad):
    for c in (
        Check.close("k", "c", bad, 1.0, atol=1.0),
        Check.less("k", "c", bad, 1.0),
        Check.greater("k", "c", bad, 1.0),
        Check.within("k", "c", bad, 0, 1),
        Check.ordered("k", "c", [1.0, bad]),
    ):
        assert c.passed is None
        assert resolve([c], "x")[0].verdict == "not measurable"
    assert not is_ok(resolve([Check.close("k", "c", math.nan, 1.0, atol=1.0)], "x"))


def test_constructor_misuse_is_refused():
    with pytest.raises(TypeError):
        Check.close("k", "c", 1.0, 1.0, atol=1, rtol=1)
    with pytest.raises(ValueError):
        Check.close("k", "c", 1.0, -1.0, factor=2)
    with pytest.raises(ValueError):  # a paper claim names its correction
        Check.close("k", "c", 1.0, 1.0, atol=0, kind="paper-claim")
    with pytest.raises(ValueError):
        resolve([Check.less("k", "c", 1, 2), Check.less("k", "d", 1, 2)], "x")


def test_refuted_needs_the_committed_list_and_a_passing_correction(monkeypatch):
    paper = Check.close("printed", "paper's formula", 2.0, 1.0, rtol=0.1, kind="paper-claim", corrected_by="fixed")
    good = Check.close("fixed", "corrected", 2.0, 2.0, rtol=0.1)
    bad = Check.close("fixed", "corrected", 3.0, 2.0, rtol=0.1)
    # not listed: a failing paper claim is a failure
    assert [c.verdict for c in resolve([paper, good], "exp")] == ["fail", "pass"]
    monkeypatch.setitem(paper_claims.PAPER_CLAIMS, "exp/printed", "docs/theory/minibatch_noise.md §1")
    checks = resolve([paper, good], "exp")
    assert [c.verdict for c in checks] == ["refuted", "pass"] and is_ok(checks)
    assert headline([c.to_dict() for c in checks]) == "1 reproduced · 1 paper claims refuted and corrected · 0 failed"
    assert [c.verdict for c in resolve([paper, bad], "exp")] == ["fail", "fail"]
    assert [c.verdict for c in resolve([paper], "exp")] == ["fail"]  # the correction must exist
    assert not is_ok(resolve([paper, bad], "exp"))
    # a paper claim that holds passes
    holds = Check.close("printed", "paper's formula", 1.0, 1.0, rtol=0.1, kind="paper-claim", corrected_by="fixed")
    assert resolve([holds, good], "exp")[0].verdict == "pass"
