"""The conventional Hessian approximation C ≈ H/S and paper 002's Table 2 (App. B).

App. B sets the noise to C = H/S (no σ², trap 13): pass ``noise_scale=σ²`` for the fair comparison
(the paper's curves use 1). μ = 0 and [Λ, H] = 0 throughout; ½ in the loss.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.linalg import commutes
from noiseprobe.core.validation import check_batch_size, check_choice, check_lr, check_matrix, check_scalar
from noiseprobe.minibatch.fluctuation import NoStationaryState
from noiseprobe.minibatch.l2 import l2_1d
from noiseprobe.minibatch.linear import input_noise_theory, label_noise_losses, label_noise_sigma


def hessian_approx_sigma(
    H: float | np.ndarray, *, lr: float | np.ndarray, batch_size: int, time: str = "discrete", noise_scale: float = 1.0
) -> np.ndarray:
    """Σ under C = noise_scale·H/S. Discrete time (eqs. 18-19): ΛHΣ + ΣHΛ − ΛHΣHΛ = ΛHΛ/S, so
    Σ = (1/S)Λ(2I − ΛH)⁻¹, finite iff ΛH ≺ 2. Continuous time (eqs. 23-24): ΛHΣ + ΣHΛ = ΛHΛ/S, Σ = Λ/(2S).
    """
    H = check_matrix("H", H, psd=True)
    Lam, scalar = check_lr(lr, H.shape[0])
    S = check_batch_size(batch_size)
    check_choice("time", time, ("discrete", "continuous"))
    noise_scale = check_scalar("noise_scale", noise_scale, lo=0.0)
    if not commutes(Lam, H):
        raise ConfigError("lr", "matrix not commuting with H", "[Λ, H] = 0 (App. B)")
    if time == "continuous":
        return noise_scale * Lam / (2 * S)
    M = 2 * np.eye(H.shape[0]) - Lam @ H
    ev = np.linalg.eigvalsh((M + M.T) / 2)
    if ev.min() <= 0:
        hmax = np.linalg.eigvalsh(H).max()
        raise NoStationaryState(
            2 / hmax if scalar is not None else 2 / np.linalg.eigvalsh(Lam @ H).max(),
            "discrete Hessian approximation needs ΛH ≺ 2I",
            "learning rate" if scalar is not None else "the scale factor of Λ",
        )
    Sg = noise_scale / S * Lam @ np.linalg.inv(M)
    return np.asarray((Sg + Sg.T) / 2)


def hessian_approx_losses(
    A: float | np.ndarray,
    *,
    lr: float | np.ndarray,
    batch_size: int,
    sigma: float,
    time: str = "discrete",
    noise_scale: float = 1.0,
) -> tuple[float, float]:
    """Label-noise losses under the Hessian approximation: L_test = ½Tr[AΣ], L_train = L_test + σ²/2
    (eqs. 20-21 discrete: (1/(2S))Tr[ΛA(2I − ΛA)⁻¹]; eqs. 25-26 continuous: Tr[ΛA]/(4S))."""
    A = check_matrix("A", A, psd=True)
    sigma = check_scalar("sigma", sigma, lo=0.0)
    test = 0.5 * float(
        np.trace(A @ hessian_approx_sigma(A, lr=lr, batch_size=batch_size, time=time, noise_scale=noise_scale))
    )
    return test + sigma**2 / 2, test


def table2(
    *, a: float, lr: float, batch_size: int, sigma: float = 1.0, b: float = 0.5, gamma: float = 0.5, u: float = 1.0
) -> pd.DataFrame:
    """Table 2 (reconstructed 1d special case, docs/theory/minibatch_noise.md §11): Σ, L_train, L_test for label noise, input
    noise and L2, exact (this paper) vs the Hessian approximation in discrete and continuous time.

    Exact column from the matrix theorems at D = 1 (Thms 2/8, Thm 9, Cor. 4); the approximations use
    C = H/S with H = a (label), k = a + b (input), k = a + γ (L2), without σ² (as the paper). Entries with no
    stationary state are +inf. One row per (case, quantity).
    """
    S = check_batch_size(batch_size)
    a, lr = check_scalar("a", a, lo=0.0, lo_open=True), check_scalar("lr", lr, lo=0.0, lo_open=True)
    sigma, b, gamma, u = (
        check_scalar("sigma", sigma, lo=0.0),
        check_scalar("b", b, lo=0.0),
        check_scalar("gamma", gamma),
        check_scalar("u", u),
    )
    rows = []

    def add(
        case: str, exact: Callable[[], tuple[float, float, float]], k: float, train_bias: float, test_bias: float
    ) -> None:
        ex = exact()
        try:
            sd = float(hessian_approx_sigma(k, lr=lr, batch_size=S, time="discrete")[0, 0])
        except NoStationaryState:
            sd = np.inf
        sc = lr / (2 * S)
        disc = (sd, k * sd / 2 + train_bias, a * sd / 2 + test_bias)
        cont = (sc, k * sc / 2 + train_bias, a * sc / 2 + test_bias)
        for i, q in enumerate(("Sigma", "train_loss", "test_loss")):
            rows.append(
                {
                    "case": case,
                    "quantity": q,
                    "exact": ex[i],
                    "hessian_discrete": disc[i],
                    "hessian_continuous": cont[i],
                }
            )

    def safe(f: Callable[[], tuple[float, float, float]]) -> Callable[[], tuple[float, float, float]]:
        def g() -> tuple[float, float, float]:
            try:
                return f()
            except NoStationaryState:
                return (np.inf,) * 3

        return g

    def label() -> tuple[float, float, float]:
        tr, te = label_noise_losses(a, lr=lr, batch_size=S, sigma=sigma)
        return float(label_noise_sigma(a, lr=lr, batch_size=S, sigma=sigma)[0, 0]), tr, te

    def inp() -> tuple[float, float, float]:
        t = input_noise_theory(a, B=b, u=[u], lr=lr, batch_size=S)
        return float(np.asarray(t["Sigma"])[0, 0]), float(t["train_loss"]), float(t["test_loss"])

    def l2() -> tuple[float, float, float]:
        t = l2_1d(a=a, gamma=gamma, u=u, lr=lr, batch_size=S)
        return t["Sigma"], t["train_loss"], t["test_loss"]

    kb, kg = a + b, a + gamma
    add("label noise", safe(label), a, sigma**2 / 2, 0.0)
    add("input noise", safe(inp), kb, a * b * u * u / (2 * kb), a * b * b * u * u / (2 * kb * kb))
    add("L2", safe(l2), kg, a * gamma * u * u / (2 * kg), a * gamma * gamma * u * u / (2 * kg * kg))
    frame: pd.DataFrame = pd.DataFrame(rows)
    return frame
