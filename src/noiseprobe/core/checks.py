"""Measured checks: a claim, the numbers behind it, and a verdict the numbers decide.

Every check is built by a constructor that computes ``passed`` from ``measured``, ``expected`` and the
tolerance; nothing passes by assertion. One pass rule (docs/checks.md), with ``se`` the standard error of
the measured value (0 when it is exact) and one z for the whole library, :data:`Z`:

=========  ==================================================================
close      ``|m − e| ≤ tol + z·se`` with ``tol = atol`` or ``rtol·|e|``
factor     ``e/f − z·se ≤ m ≤ e·f + z·se`` (``e > 0``; a ratio within a factor f)
less       ``m ≤ bound + z·se``
greater    ``m ≥ bound − z·se``
within     ``lo − z·se ≤ m ≤ hi + z·se``
ordered    ``v[k+1] − v[k] ≥ −z·√(se[k]² + se[k+1]²)`` for every k (increasing; mirrored for decreasing)
equal      ``m == e`` (labels, counts: nothing statistical)
=========  ==================================================================

A measured value that is missing or not finite (e.g. every replica diverged) makes the check
"not measurable", never "pass".

Every check has a stable ``key`` (tests and the report find checks by it) and a ``kind``:
``"reproduction"`` (the software reproduces a phenomenon or a prediction) or ``"paper-claim"`` (a paper's
printed formula, tested as printed). Verdicts (:func:`resolve`): "pass", "fail", "not measurable", or
"refuted" — a paper-claim that fails, is listed in :data:`noiseprobe.core.paper_claims.PAPER_CLAIMS` (with
the docs/theory section that refutes it), and whose ``corrected_by`` names a reproduction check of the
same run that passes. Anything else that fails is "fail".
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

#: the one z of the library: a measured value within tol + Z standard errors passes (≈ 6e-5 two-sided)
Z: float = 4.0

Kind = Literal["reproduction", "paper-claim"]
Verdict = Literal["pass", "fail", "refuted", "not measurable"]
KINDS: tuple[str, ...] = ("reproduction", "paper-claim")


def _num(x: Any) -> float | None:
    """``float(x)`` when x is a finite real number, else None (missing, NaN, ±inf, not a number)."""
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _g(x: float) -> str:
    return f"{x:.3g}"


def _slack(se: float | None, z: float) -> tuple[float, str]:
    """z·se and its printed form ('' when there is no standard error)."""
    if se is None or se == 0:
        return 0.0, ""
    s = _num(se)
    if s is None or s < 0:
        return math.nan, f" + {z:g}×{se}"
    return z * s, f" + {z:g}×{_g(s)}"


@dataclass(frozen=True)
class Check:
    """One claim, measured. Build it with a constructor (:meth:`close`, :meth:`less`, ...), not directly."""

    key: str
    claim: str
    rule: str
    measured: Any
    expected: Any
    tolerance: str
    passed: bool | None  # None: not measurable
    se: Any = None
    kind: str = "reproduction"
    corrected_by: str | None = None
    detail: str = ""
    verdict: str = ""  # set by resolve()

    # -- constructors -------------------------------------------------------------------------------
    @classmethod
    def close(
        cls,
        key: str,
        claim: str,
        measured: Any,
        expected: Any,
        *,
        rtol: float | None = None,
        atol: float | None = None,
        factor: float | None = None,
        se: Any = None,
        z: float = Z,
        **kw: Any,
    ) -> Check:
        """``measured`` ≈ ``expected``: exactly one of ``atol``, ``rtol`` (relative to |expected|) or
        ``factor`` (ratio within [1/f, f], expected > 0)."""
        if sum(t is not None for t in (rtol, atol, factor)) != 1:
            raise TypeError(f"check {key!r}: give exactly one of rtol, atol, factor")
        m, e = _num(measured), _num(expected)
        if e is None:
            raise ValueError(f"check {key!r}: expected {expected!r} must be a finite number")
        slack, s_txt = _slack(se, z)
        if factor is not None:
            if not (factor >= 1 and e > 0):
                raise ValueError(f"check {key!r}: factor needs factor >= 1 and expected > 0")
            tol_txt = f"factor {_g(factor)}{s_txt}"
            ok = None if m is None else (e / factor - slack <= m <= e * factor + slack)
            return cls(key, claim, "factor", measured, expected, tol_txt, ok, se, **kw)
        tol = atol if atol is not None else rtol * abs(e)  # type: ignore[operator]
        if not tol >= 0:
            raise ValueError(f"check {key!r}: tolerance must be >= 0")
        tol_txt = f"±({_g(tol)}{s_txt})" if atol is not None else f"±({_g(rtol)}·|expected|{s_txt})"  # type: ignore[arg-type]
        ok = None if m is None else abs(m - e) <= tol + slack
        return cls(key, claim, "close", measured, expected, tol_txt, ok, se, **kw)

    @classmethod
    def less(
        cls, key: str, claim: str, measured: Any, bound: float, *, se: Any = None, z: float = Z, **kw: Any
    ) -> Check:
        """``measured ≤ bound`` (up to z standard errors)."""
        m, slack_txt = _num(measured), _slack(se, z)
        ok = None if m is None else m <= bound + slack_txt[0]
        return cls(key, claim, "less", measured, bound, f"0{slack_txt[1]}", ok, se, **kw)

    @classmethod
    def greater(
        cls, key: str, claim: str, measured: Any, bound: float, *, se: Any = None, z: float = Z, **kw: Any
    ) -> Check:
        """``measured ≥ bound`` (up to z standard errors)."""
        m, slack_txt = _num(measured), _slack(se, z)
        ok = None if m is None else m >= bound - slack_txt[0]
        return cls(key, claim, "greater", measured, bound, f"0{slack_txt[1]}", ok, se, **kw)

    @classmethod
    def within(
        cls, key: str, claim: str, measured: Any, lo: float, hi: float, *, se: Any = None, z: float = Z, **kw: Any
    ) -> Check:
        """``lo ≤ measured ≤ hi`` (up to z standard errors)."""
        if not lo <= hi:
            raise ValueError(f"check {key!r}: needs lo <= hi")
        m, slack_txt = _num(measured), _slack(se, z)
        ok = None if m is None else lo - slack_txt[0] <= m <= hi + slack_txt[0]
        return cls(key, claim, "within", measured, [lo, hi], f"0{slack_txt[1]}", ok, se, **kw)

    @classmethod
    def ordered(
        cls,
        key: str,
        claim: str,
        values: Sequence[Any],
        *,
        increasing: bool = True,
        se: Sequence[Any] | None = None,
        z: float = Z,
        **kw: Any,
    ) -> Check:
        """``values`` increase (or decrease) step by step, each step up to z standard errors of the pair."""
        vals = [_num(v) for v in values]
        ses = [0.0] * len(vals) if se is None else [(_num(s) if s is not None else None) for s in se]
        if len(ses) != len(vals) or len(vals) < 2:
            raise ValueError(f"check {key!r}: needs >= 2 values and one se per value")
        if any(v is None for v in vals) or any(s is None for s in ses):
            ok = None
        else:
            sign = 1.0 if increasing else -1.0
            ok = all(
                sign * (b - a) >= -z * math.hypot(sa, sb)  # type: ignore[operator,arg-type]
                for a, b, sa, sb in zip(vals, vals[1:], ses, ses[1:])
            )
        word = "increasing" if increasing else "decreasing"
        tol_txt = "0" if se is None else f"{z:g}×se of each step"
        return cls(key, claim, "ordered", list(values), word, tol_txt, ok, None if se is None else list(se), **kw)

    @classmethod
    def equal(cls, key: str, claim: str, measured: Any, expected: Any, **kw: Any) -> Check:
        """``measured == expected`` exactly (labels, counts, flags). ``None`` measured: not measurable."""
        ok = None if measured is None else bool(measured == expected)
        return cls(key, claim, "equal", measured, expected, "exact", ok, None, **kw)

    @classmethod
    def not_measurable(cls, key: str, claim: str, why: str, **kw: Any) -> Check:
        """A claim that this run could not measure (e.g. every replica diverged), with the reason."""
        kw["detail"] = (why + "; " + kw["detail"]) if kw.get("detail") else why
        return cls(key, claim, "none", None, None, "", None, None, **kw)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"check {self.key!r}: kind {self.kind!r} is not one of {KINDS}")
        if self.kind == "paper-claim" and not self.corrected_by:
            raise ValueError(f"check {self.key!r}: a paper-claim names the reproduction check that corrects it")

    @property
    def expected_text(self) -> str:
        """``expected`` as a reader sees it: '≤ 0.1', '≥ 2', '[0.9, 1.1]', 'increasing', '1.5'."""
        e = self.expected
        if self.rule == "less":
            return f"≤ {_g(e)}"
        if self.rule == "greater":
            return f"≥ {_g(e)}"
        if self.rule == "within":
            return f"[{_g(e[0])}, {_g(e[1])}]"
        return _g(e) if isinstance(e, float) else str(e)

    def to_dict(self) -> dict[str, Any]:
        from noiseprobe.core.store import jsonable

        d = asdict(self)
        d["passed"] = self.verdict == "pass"
        d["expected_text"] = self.expected_text
        out: dict[str, Any] = jsonable(d)
        return out


def resolve(checks: Sequence[Check], experiment: str) -> list[Check]:
    """Give every check its verdict (see the module docstring); keys must be unique within a run."""
    from noiseprobe.core.paper_claims import PAPER_CLAIMS

    keys = [c.key for c in checks]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"{experiment}: duplicate check keys {dup}")
    first = {c.key: ("not measurable" if c.passed is None else "pass" if c.passed else "fail") for c in checks}
    by_key = {c.key: c for c in checks}
    out = []
    for c in checks:
        v = first[c.key]
        if v == "fail" and c.kind == "paper-claim":
            fix = by_key.get(c.corrected_by or "")
            if (
                f"{experiment}/{c.key}" in PAPER_CLAIMS
                and fix is not None
                and fix.kind == "reproduction"
                and first[fix.key] == "pass"
            ):
                v = "refuted"
        out.append(replace(c, verdict=v))
    return out


def is_ok(checks: Sequence[Check]) -> bool:
    """The run reproduced what it claims: no check "fail", no reproduction check "not measurable"."""
    return not any(c.verdict == "fail" or (c.kind == "reproduction" and c.verdict == "not measurable") for c in checks)


def stored_verdicts(checks: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The check dicts of a stored summary.json with a verdict each: a summary written before checks
    computed their own verdicts (each a ``{claim, measured, expected, tolerance, passed, detail}``) gets
    the verdict its ``passed`` says ("not measurable" for a non-finite measured value), a key from its
    claim and rule "legacy"; current dicts are returned unchanged."""
    out = []
    for c in checks:
        if "verdict" in c:
            out.append(c)
            continue
        measured = c.get("measured")
        finite = not (isinstance(measured, (float, str)) and str(measured).lower() in ("nan", "inf", "-inf"))
        verdict = ("pass" if c.get("passed") else "fail") if finite else "not measurable"
        key = re.sub(r"[^a-z0-9]+", "-", str(c.get("claim", "")).lower()).strip("-")[:60]
        out.append({"key": key, "rule": "legacy", "kind": "reproduction", **c, "verdict": verdict})
    return out


def headline(verdicts: Sequence[dict[str, Any]]) -> str:
    """'41 reproduced · 10 paper claims refuted and corrected · 0 failed' (+ not measurable, if any)."""
    count = {v: sum(c.get("verdict") == v for c in verdicts) for v in ("pass", "refuted", "fail", "not measurable")}
    text = (
        f"{count['pass']} reproduced · {count['refuted']} paper claims refuted and corrected · {count['fail']} failed"
    )
    return text + (f" · {count['not measurable']} not measurable" if count["not measurable"] else "")


__all__ = ["Z", "Check", "Kind", "Verdict", "resolve", "is_ok", "headline", "stored_verdicts"]
