"""Fig. 4(e) (minibatch noise): the eigenvalues and the matrix of Σ in high dimension (rotated anisotropic
Hessian) against the exact solve of eq. (3) with the Lemma 1 noise and the two Hessian approximations. A pure
summary of the measured tables, its checks and its drawing; :class:`~noiseprobe.experiments.mbn_fig4.Fig4`
composes them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from noiseprobe.core.checks import Check, Z
from noiseprobe.core.seeding import replica_generators
from noiseprobe.core.stats import standard_error
from noiseprobe.experiments._mbn import worst_point
from noiseprobe.minibatch.baselines import hessian_approx_sigma
from noiseprobe.minibatch.fluctuation import NoStationaryState, solve_fluctuation
from noiseprobe.minibatch.linear import label_noise_kappa, lemma1_noise_map

if TYPE_CHECKING:
    from noiseprobe.experiments._mbn_fig4_config import Fig4Config

#: random stream of the high-dimensional panel's Hessian eigenbasis (distinct from every chain's noise streams)
_HD_BASIS_STREAM = 4004


def highdim_hessian(config: Fig4Config) -> np.ndarray:
    """A = Q diag(h) Qᵀ: h evenly spaced over ``hess_hd``, Q a random rotation drawn from ``seed``."""
    D = config.D_hd
    g = replica_generators(config.seed, [0], stream=_HD_BASIS_STREAM)[0]
    Q = np.linalg.qr(g.standard_normal((D, D)))[0]
    lo, hi = config.hess_hd  # validated: [smallest, largest]
    A = Q @ np.diag(np.linspace(lo, hi, D)) @ Q.T
    sym: np.ndarray = (A + A.T) / 2
    return sym


def highdim_sigma(config: Fig4Config) -> np.ndarray:
    """Exact Σ of the high-dimensional panel: eq. (3) with the Lemma 1 noise (eq. 5), σ = 1, solved exactly
    (raises NoStationaryState past the stability bound)."""
    A = highdim_hessian(config)
    C0, noise_map = lemma1_noise_map(A, batch_size=config.batch_size_hd)
    return solve_fluctuation(A, C0, lr=config.lr_hd, noise_map=noise_map)


@dataclass(frozen=True)
class SigmaHighdim:
    """Panel (e): eigenvalues ``ev`` of the pooled Σ̂ (mean over surviving chains) with their SEs by the delta
    method, de_k = v_kᵀ dΣ v_k (the across-chain SE of the per-chain v_kᵀ M_r v_k, v_k eigenvectors of Σ̂);
    the predicted eigenvalues; and Σ̂ in the eigenbasis U of the exact Σ (``rot``, per chain) against
    diag(exact eigenvalues) ``lam``. Eigenvalues alone would not see a wrong orientation (and a sample
    covariance's eigenvalues are spread out)."""

    why_not: str | None = None
    chains: int = 0
    ev: Any = None
    se: Any = None
    pred: Any = None
    rot: Any = None
    lam: Any = None
    kappa_factor: float = float("nan")


def sigma_highdim(config: Fig4Config, res: pd.DataFrame, sig: pd.DataFrame) -> SigmaHighdim:
    D, lr, S = config.D_hd, config.lr_hd, config.batch_size_hd
    ok = set(res[(res.panel == "hd") & ~res.diverged.astype(bool)].chain)
    sig = sig[sig.chain.isin(ok)]
    try:
        exact = highdim_sigma(config)
    except NoStationaryState as e:
        return SigmaHighdim(why_not=f"no stationary Σ ({e})")
    if len(ok) < 2:
        return SigmaHighdim(why_not="fewer than two convergent chains")
    ids, inv = np.unique(sig.chain.to_numpy(), return_inverse=True)
    M = np.zeros((len(ids), D, D))
    M[inv, sig.i.to_numpy(), sig.j.to_numpy()] = sig.m.to_numpy()
    M[inv, sig.j.to_numpy(), sig.i.to_numpy()] = sig.m.to_numpy()
    ev, V = np.linalg.eigh(M.mean(0))
    se = standard_error(np.einsum("ik,rij,jk->rk", V, M, V))
    A = highdim_hessian(config)
    lam, U = np.linalg.eigh(exact)
    pred = {
        "exact": np.linalg.eigvalsh(exact),
        "discrete": np.linalg.eigvalsh(hessian_approx_sigma(A, lr=lr, batch_size=S)),
        "continuous": np.linalg.eigvalsh(hessian_approx_sigma(A, lr=lr, batch_size=S, time="continuous")),
    }
    rot = np.einsum("ik,rij,jl->rkl", U, M, U)  # per-chain Σ̂ in the exact eigenbasis
    kappa = 1 + label_noise_kappa(A, lr=lr, batch_size=S) / S
    return SigmaHighdim(chains=len(ids), ev=ev, se=se, pred=pred, rot=rot, lam=lam, kappa_factor=kappa)


def panel_hd_checks(config: Fig4Config, hd: SigmaHighdim) -> list[Check]:
    D = config.D_hd
    keys = {
        "highdim-eigenvalues-match": f"Fig. 4(e): the eigenvalues of the simulated Σ in D = {D} match the "
        "exact solve of eq. (3) with the Lemma 1 noise",
        "highdim-matrix-matches": f"Fig. 4(e): the simulated Σ in D = {D} equals the exact solve as a matrix: "
        "in the exact eigenbasis, diagonal entries = the exact eigenvalues and "
        "off-diagonal entries = 0",
        "hessian-approximations-miss-highdim": f"Fig. 4(e): both Hessian approximations miss the {D}d "
        "eigenvalues (min |z| over the eigenvalues and both)",
    }
    if hd.why_not is not None:
        return [Check.not_measurable(k, c, hd.why_not) for k, c in keys.items()]
    ev, se, pred = hd.ev, hd.se, hd.pred
    upper = np.triu_indices(D)
    z = {k: (ev - v) / se for k, v in pred.items()}
    ratio = {k: ev / v for k, v in pred.items()}
    z_miss = float(min(np.abs(z["discrete"]).min(), np.abs(z["continuous"]).min()))
    return [
        worst_point(
            "highdim-eigenvalues-match",
            keys["highdim-eigenvalues-match"],
            ev,
            pred["exact"],
            se,
            [f"rank {k + 1}" for k in range(D)],
            detail=f"{hd.chains} chains; relative SE {float((se / ev).min()):.2g}–{float((se / ev).max()):.2g}",
        ),
        worst_point(
            "highdim-matrix-matches",
            keys["highdim-matrix-matches"],
            hd.rot.mean(0)[upper],
            np.diag(hd.lam)[upper],
            np.asarray(standard_error(hd.rot))[upper],
            [f"({i},{j})" for i, j in zip(*upper)],
            detail="across-chain SE of each entry of Uᵀ M_r U",
        ),
        Check.greater(
            "hessian-approximations-miss-highdim",
            keys["hessian-approximations-miss-highdim"],
            z_miss,
            Z,
            detail="simulated/predicted eigenvalue ranges: "
            + ", ".join(f"{k} [{ratio[k].min():.3f}, {ratio[k].max():.3f}]" for k in ("discrete", "continuous"))
            + f"; Thm 2's isotropic enhancement 1 + κ/S = {hd.kappa_factor:.3f}, absent from both",
        ),
    ]


def panel_hd_plot(config: Fig4Config, hd: SigmaHighdim, ax: Any) -> None:
    if hd.why_not is not None:
        return
    D, h = config.D_hd, config.hess_hd
    k = np.arange(1, D + 1)
    ax.errorbar(k, hd.ev, yerr=Z * hd.se, fmt="o", ms=4, label="simulation (±4 SE)")
    for (name, v), st in zip(hd.pred.items(), ("-", "--", ":")):
        ax.plot(k, v, st, label={"exact": "exact (eq. 3 + Lemma 1)"}.get(name, f"Hessian approx., {name}"))
    ax.set(
        yscale="log",
        xlabel="eigenvalue rank",
        ylabel="eigenvalue of Σ",
        title=f"(e) D={D}, Hessian eig. {h[0]:g}…{h[1]:g}, λ={config.lr_hd}, S={config.batch_size_hd}",
    )
    ax.legend(fontsize="x-small")
