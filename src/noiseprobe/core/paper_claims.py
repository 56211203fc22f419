"""The committed list of paper claims that the reference refutes (docs/checks.md shows the same table).

A check of kind "paper-claim" that fails gets the verdict "refuted" only if its ``experiment/key`` is
listed here, with the section of ``shared/reference`` that refutes it, and its ``corrected_by`` check
passes; every other failure is "fail". Adding a key here is a reviewed change: it says "the paper prints
this formula, and the reference shows it to be wrong".
"""

from __future__ import annotations

#: "experiment-id/check-key" -> the reference's section (and one line) that refutes the printed claim
PAPER_CLAIMS: dict[str, str] = {
    "sl-fig3/caption-regulariser-2a": "§7.8: the printed ½Δ_ηL̂ = 2a(w) contradicts the stated L̂ (Reg = a/2; numerics reject 2a)",
    "mbn-fig2/eq93-tail-index-agrees":
        "reference §10, §15.5: eq. (93) is an approximation; the exact tail index is the Kesten root of E abs(1 − λaχ²_S/S)^β = 1",
    "mbn-fig7/eq93-tail-index-agrees":
        "reference §10, §15.5: eq. (93) is an approximation; the exact tail index is the Kesten root of E abs(1 − λaχ²_S/S)^β = 1",
}
