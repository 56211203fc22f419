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
    "mbn-fig2/eq93-tail-index-agrees": "reference §10, §15.5: eq. (93) is an approximation; the exact tail index is the Kesten root of E abs(1 − λaχ²_S/S)^β = 1",
    "mbn-fig7/continuous-index-exact-as-lr-vanishes": "docs/theory/minibatch_noise.md §10: for Gaussian inputs β_c/β_K − 1 → 4/u* − 1 = 0.1139 (u*(ln u* − 1) = 1), not 0: rare batches with λh > 2 set the index (docs/theory/tail_index_limit.md)",
    "mbn-fig7/eq93-tail-index-agrees": "reference §10, §15.5: eq. (93) is an approximation; the exact tail index is the Kesten root of E abs(1 − λaχ²_S/S)^β = 1",
    "nin-fig1/niw-decay-eq2-paper": "reference §4 item 1: eq. (2)/(14) halves the NIW decay rate (the gradient of ½σ²WᵀHW is σ²HW); for ReLU nets the local Hessian also misses the kinks (docs/nin_probe.md)",
    "nin-fig2-bottom/niw-decay-eq2-paper": "reference §4 item 1: eq. (2)/(14) halves the NIW decay rate (the gradient of ½σ²WᵀHW is σ²HW); for ReLU nets the local Hessian also misses the kinks (docs/nin_probe.md)",
    "nin-fig2-top/exact-catapult-divergent-paper": "reference §5.3: σ_div = √max(2/B0, 2/B̃0) is off by 6–15×; no stable minimum above 2/(η|M|σx)",
    "nin-fig2-top/exact-decay-catapult-paper": "reference §5.3: σ_cat = √min(2/B0, 2/B̃0) overestimates by ~1.6×; the edge of the final minimum η σ² w1*² = 2 predicts it",
    "nin-fig2-top/exact-decoupled-decay-paper": "reference §5.3–5.4: σ_dec = 2Ã0/B̃0 is off by 9–800×; the boundary is the horizon η σ² Σ_t w1² = 1",
    "nin-fig2-top/exact-eq10-tau-noise": "reference §5.5: the t = 0 time scale of eq. (10) is off by 0.007–0.7× when w1 moves; the integrated eq. (9) holds",
    "nin-fig2-top/reduced-catapult-divergent-paper": "reference §5.3: σ_div = √max(2/B0, 2/B̃0) is off by 6–15×; no stable minimum above 2/(η|M|σx)",
    "nin-fig2-top/reduced-decay-catapult-paper": "reference §5.3: σ_cat = √min(2/B0, 2/B̃0) overestimates by ~1.6×; the edge of the final minimum η σ² w1*² = 2 predicts it",
    "nin-fig2-top/reduced-decoupled-decay-paper": "reference §5.3–5.4: σ_dec = 2Ã0/B̃0 is off by 9–800×; the boundary is the horizon η σ² Σ_t w1² = 1",
    "nin-fig2-top/reduced-eq10-tau-noise": "reference §5.5: the t = 0 time scale of eq. (10) is off by 0.007–0.7× when w1 moves; the integrated eq. (9) holds",
    "nin-fig3/niw-decay-eq2-paper": "reference §4 item 1: eq. (2)/(14) halves the NIW decay rate (the gradient of ½σ²WᵀHW is σ²HW); for ReLU nets the local Hessian also misses the kinks (docs/nin_probe.md)",
}
