"""Gradient noise and curvature of a GPT-style decoder (``noiseprobe.models.GPT``: 4 pre-LayerNorm blocks,
width 256, 4 heads, T = 128, vocabulary 512, tied output head; 3.3 M parameters) on N = 64 sequences of
a learnable Markov chain (no padding; per-sample loss = the sequence's token-mean cross-entropy), float32,
one torch thread.

1. Tr C + the top-10 eigenvalues of the minibatch-noise covariance (``NoiseCovariance``: Gram of the
   per-sample gradients, block Krylov on the N × N centred Gram, eigenvectors kept lazy), against one
   forward+backward of the same batch: time (best of several rounds, interleaved in one process) and peak
   memory (peak RSS of a separate subprocess per computation, above the RSS after building model and
   data: the computation's own peak). Beside it, in the same run, the per-sample gradients by
   ``torch.func`` vmap(grad) and by Opacus (``GradSampleModule``; positions fed as (N, T) ids, since
   Opacus takes an embedding's first input axis as the batch), reduced to squared norms.
2. Top Hessian eigenvalue while training: SGD (lr 0.5, batches of 8 from 512 sequences); the Hessian of
   the mean loss on a fixed probe batch (8 sequences: an HVP on 64 costs ~15 s on one thread) is
   probed after 200 burn-in steps and then every 50 steps. Warm-started Lanczos (``lanczos(tol=1e-2,
   warm_start=previous top vector)``, block 1, at least 8 products: the warm-start guard) against PyHessian's cold-started power iteration (random
   start, stop when the eigenvalue changes by < 1e-3 relative, ≤ 100 iterations) and cold-started Lanczos:
   Hessian-vector products per call, and each one's relative error against converged Lanczos references
   (tol 1e-6: λ_max, λ_2 and the largest-magnitude eigenvalue, which power iteration targets).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from bench_covariance import _best_of
from noiseprobe.models import GPT, GPTConfig
from noiseprobe.probes.eigensolvers import lanczos
from noiseprobe.probes.operators import Hessian, NoiseCovariance
from noiseprobe.probes.sample_losses import TokenMeanCrossEntropy

#: per-sequence token-mean cross-entropy, shape (N,) (no padding here)
token_ce = TokenMeanCrossEntropy()


class OpacusGPT(GPT):
    """The same decoder with positions embedded from (N, T) ids (numerically identical), the form
    Opacus's per-sample Embedding rule needs."""

    def forward(self, ids: Tensor, mask: Tensor | None = None) -> Tensor:
        n, t = ids.shape
        x = self.tok(ids) + self.pos(torch.arange(t, device=ids.device).expand(n, t))
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.ln(x))


def _config(quick: bool) -> tuple[GPTConfig, int]:
    if quick:
        return GPTConfig(vocab=128, width=64, heads=4, layers=2, T=32), 16
    return GPTConfig(vocab=512, width=256, heads=4, layers=4, T=128), 64


def markov_tokens(cfg: GPTConfig, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """n sequences (ids, next-token targets), each (n, T), from a random Markov chain in which every token
    has 4 successors (probabilities 0.55, 0.25, 0.15, 0.05): learnable, entropy ≈ 1.1 nats per token."""
    g = torch.Generator().manual_seed(seed)
    succ = torch.randint(0, cfg.vocab, (cfg.vocab, 4), generator=g)
    probs = torch.tensor([0.55, 0.25, 0.15, 0.05])
    seq = torch.empty(n, cfg.T + 1, dtype=torch.long)
    seq[:, 0] = torch.randint(0, cfg.vocab, (n,), generator=g)
    for t in range(cfg.T):
        choice = torch.multinomial(probs.expand(n, 4), 1, generator=g)[:, 0]
        seq[:, t + 1] = succ[seq[:, t], choice]
    return seq[:, :-1], seq[:, 1:]


def _model(cfg: GPTConfig, cls: type[GPT] = GPT) -> GPT:
    torch.manual_seed(0)
    return cls(cfg)


def _computations(model: GPT, ids: Tensor, y: Tensor) -> dict:
    """The timed computations, each a closure over the model and the batch."""
    from torch.func import functional_call, grad, vmap

    def fwd_bwd() -> None:
        model.zero_grad()
        token_ce(model(ids), y).mean().backward()

    def trace_top10() -> None:
        noise = NoiseCovariance(model, token_ce, ids, y, batch_size=8)
        noise.trace()
        noise.topk(10)

    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_i(p: dict, xi: Tensor, yi: Tensor) -> Tensor:
        return token_ce(functional_call(model, p, (xi[None],)), yi[None]).sum()

    def func_grads() -> None:
        g = vmap(grad(loss_i), in_dims=(None, 0, 0))(params, ids, y)
        sum((v.reshape(v.shape[0], -1) ** 2).sum(1) for v in g.values())

    return {"fwd_bwd": fwd_bwd, "trace_top10": trace_top10, "vmap_grad": func_grads, "opacus": _opacus(model, ids, y)}


def _opacus(model: GPT, ids: Tensor, y: Tensor) -> Callable[[], None]:
    """Opacus per-sample gradients reduced to squared norms; without Opacus, a closure that raises."""
    try:
        from opacus import GradSampleModule
    except ImportError as err:  # optional: pip install opacus
        missing = err

        def unavailable() -> None:
            raise missing

        return unavailable
    opacus_model = OpacusGPT(model.cfg)
    opacus_model.load_state_dict(model.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gsm = GradSampleModule(opacus_model, loss_reduction="sum")

    def opacus_grads() -> None:
        gsm.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            token_ce(gsm(ids), y).sum().backward()
        sum((p.grad_sample.reshape(p.grad_sample.shape[0], -1) ** 2).sum(1) for p in opacus_model.parameters())

    return opacus_grads


def peak_memory(name: str, quick: bool) -> dict:
    """Run one computation in a fresh subprocess: its peak RSS and the RSS before it (MB)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peak", name] + (["--quick"] if quick else [])
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=1800)
    if out.returncode:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _vm(field: str) -> float:
    """A memory figure of this process from /proc/self/status, MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _peak_main(name: str, quick: bool) -> None:
    """Subprocess body: build model and data, reset the peak-RSS mark (Linux ``clear_refs`` 5), run the
    computation once, print the RSS before it, the peak during it and their difference (MB)."""
    torch.set_num_threads(1)
    cfg, n = _config(quick)
    model = _model(cfg)
    ids, y = markov_tokens(cfg, n)
    fn = _computations(model, ids, y)[name]
    before = _vm("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    fn()
    peak = _vm("VmHWM")
    print(json.dumps({"before_mb": before, "peak_mb": peak, "own_mb": peak - before}))


def power_iteration(op: Hessian, tol: float = 1e-3, max_iter: int = 100, seed: int = 0) -> tuple[float, int]:
    """PyHessian's ``hessian.eigenvalues`` for the top eigenvalue: v random normal, v ← Hv/‖Hv‖, stop when
    the Rayleigh quotient changes by < tol relative. Returns (eigenvalue, Hessian-vector products)."""
    v = torch.randn(op.num_params, generator=torch.Generator().manual_seed(seed)).to(op.device, op.torch_dtype)
    v = v / v.norm()
    eig = None
    for i in range(max_iter):
        hv = op.mv(v)
        new = float(hv @ v)
        v = hv / hv.norm()
        if eig is not None and abs(eig - new) / (abs(eig) + 1e-6) < tol:
            return new, i + 1
        eig = new
    return eig, max_iter


def hessian_rows(quick: bool) -> list[dict]:
    cfg, _ = _config(quick)
    model = _model(cfg)
    n_probe, batch, calls, steps, burn_in = (4, 8, 2, 50, 100) if quick else (8, 8, 3, 50, 200)
    pool_ids, pool_y = markov_tokens(cfg, 512, seed=1)
    probe_ids, probe_y = pool_ids[:n_probe], pool_y[:n_probe]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(2)

    def sgd(n_steps: int) -> None:
        for _ in range(n_steps):
            idx = torch.randint(0, pool_ids.shape[0], (batch,), generator=g)
            opt.zero_grad()
            token_ce(model(pool_ids[idx]), pool_y[idx]).mean().backward()
            opt.step()

    sgd(burn_in)
    prev = None
    rec: dict[str, list[float]] = {
        k: [] for k in ("warm", "cold", "power", "warm_err", "power_err", "power_err_lm", "overlap", "gap", "loss")
    }
    for call in range(calls + 1):
        op = Hessian(model, token_ce, probe_ids, probe_y)
        ref = lanczos(op, 2, tol=1e-6, warm_start=prev, max_matvecs=300)  # λ1 and λ2, converged
        lam = float(ref.eigenvalues[0])
        if prev is not None:
            lam_lm = float(lanczos(op, 1, which="LM", tol=1e-6, max_matvecs=300).eigenvalues[0])
            warm = lanczos(op, 1, tol=1e-2, warm_start=prev.eigenvectors[:, :1])
            cold = lanczos(op, 1, tol=1e-2, seed=call)
            power, n_power = power_iteration(op, seed=call)
            rec["warm"].append(warm.matvecs)
            rec["cold"].append(cold.matvecs)
            rec["power"].append(n_power)
            rec["warm_err"].append(abs(float(warm.eigenvalues[0]) - lam) / abs(lam))
            rec["power_err"].append(abs(power - lam) / abs(lam))
            rec["power_err_lm"].append(abs(power - lam_lm) / abs(lam_lm))
            rec["overlap"].append(abs(float(prev.eigenvectors[:, 0] @ ref.eigenvectors[:, 0])))
        rec["gap"].append(1 - float(ref.eigenvalues[1]) / lam)
        rec["loss"].append(float(op.loss.detach()))
        prev = ref
        sgd(steps if call < calls else 0)
    mean = lambda xs: sum(xs) / len(xs)
    fmt = lambda xs: ", ".join(f"{v:.2g}" for v in xs)
    size = f"GPT {cfg.layers}x{cfg.width}, T={cfg.T}, probe batch {n_probe}"
    setting = (
        f"{calls} calls, {steps} SGD steps apart after {burn_in}; probe loss {rec['loss'][0]:.2f} -> "
        f"{rec['loss'][-1]:.2f}; relative gap 1 - λ2/λ1 per call {fmt(rec['gap'])}; "
        f"|<v_prev, v_new>| {fmt(rec['overlap'])}"
    )
    return [
        {
            "name": f"top Hessian eigenvalue, warm-started Lanczos, tol 1e-2 ({size})",
            "measured": mean(rec["warm"]),
            "baseline": "PyHessian power iteration (cold, tol 1e-3)",
            "baseline_value": mean(rec["power"]),
            "ratio": mean(rec["warm"]) / mean(rec["power"]),
            "unit": "HVPs per call",
            "target": "<= 10 HVPs at 1% rel. error",
            "passed": max(rec["warm"]) <= 10 and max(rec["warm_err"]) <= 1e-2,
            "note": (
                f"HVPs per call {fmt(rec['warm'])}, rel. error {fmt(rec['warm_err'])}; cold-started Lanczos at "
                f"the same tol: {fmt(rec['cold'])} HVPs. {setting}"
            ),
        },
        {
            "name": f"top Hessian eigenvalue, PyHessian power iteration, cold ({size})",
            "measured": mean(rec["power"]),
            "baseline": "warm-started Lanczos",
            "baseline_value": mean(rec["warm"]),
            "ratio": mean(rec["power"]) / mean(rec["warm"]),
            "unit": "HVPs per call",
            "target": "info",
            "passed": None,
            "note": (
                f"HVPs per call {fmt(rec['power'])}; rel. error against λ_max {fmt(rec['power_err'])}, against "
                f"the largest-magnitude eigenvalue (what power iteration targets) {fmt(rec['power_err_lm'])}"
            ),
        },
    ]


def run(quick: bool = False) -> list[dict]:
    torch.set_num_threads(1)
    cfg, n = _config(quick)
    model = _model(cfg)
    ids, y = markov_tokens(cfg, n)
    size = f"GPT {cfg.layers}x{cfg.width}, T={cfg.T}, vocab {cfg.vocab}, N={n}"
    fns = _computations(model, ids, y)
    errors: dict[str, str] = {}
    for name, fn in list(fns.items()):
        try:
            fn()
        except Exception as err:  # noqa: BLE001 — a method that fails here is reported, not hidden
            errors[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            del fns[name]
    t = _best_of(fns, 1 if quick else 3)
    mem = {name: peak_memory(name, quick) for name in ("fwd_bwd", "trace_top10", "vmap_grad", "opacus")}
    base_t, base_m = t["fwd_bwd"], mem["fwd_bwd"].get("own_mb", math.nan)
    labels = {
        "trace_top10": "Tr C + top-10 eigenvalues (NoiseCovariance)",
        "vmap_grad": "per-sample gradients, torch.func vmap(grad)",
        "opacus": "per-sample gradients, Opacus GradSampleModule",
    }
    rows = []
    for name, label in labels.items():
        target = name == "trace_top10"
        if name in errors:
            rows.append(
                {
                    "name": f"{label} ({size})",
                    "measured": None,
                    "baseline": "forward+backward",
                    "baseline_value": base_t,
                    "ratio": None,
                    "unit": "s",
                    "target": "<= 3x" if target else "info",
                    "passed": False if target else None,
                    "note": f"fails: {errors[name]}",
                }
            )
            continue
        m = mem[name]
        own = m.get("own_mb", math.nan)
        rows.append(
            {
                "name": f"{label}: time ({size})",
                "measured": t[name],
                "baseline": "forward+backward",
                "baseline_value": base_t,
                "ratio": t[name] / base_t,
                "unit": "s",
                "target": "<= 3x" if target else "info",
                "passed": t[name] / base_t <= 3 if target else None,
                "note": "best of interleaved rounds, one process",
            }
        )
        rows.append(
            {
                "name": f"{label}: peak memory ({size})",
                "measured": own,
                "baseline": "forward+backward",
                "baseline_value": base_m,
                "ratio": own / base_m,
                "unit": "MB above setup",
                "target": "<= 2x" if target else "info",
                "passed": own / base_m <= 2 if target else None,
                "note": (
                    f"subprocess peak RSS {m.get('peak_mb', math.nan):.0f} MB vs "
                    f"{mem['fwd_bwd'].get('peak_mb', math.nan):.0f} MB"
                    if "error" not in m
                    else m["error"]
                ),
            }
        )
    return rows + hessian_rows(quick)


def step_memory_row(name: str, mem: dict[str, dict]) -> dict:
    """The "peak memory" aim row of a monitor benchmark: the measurement's peak RSS above setup over a
    training step's (``mem["measure"]``, ``mem["step"]`` from a ``--peak`` subprocess each), aim <= 2x."""
    own, base = mem["measure"].get("own_mb", math.nan), mem["step"].get("own_mb", math.nan)
    return {
        "name": name,
        "measured": own,
        "baseline": "one AdamW training step",
        "baseline_value": base,
        "ratio": own / base,
        "unit": "MB above setup",
        "target": "<= 2x",
        "aim_met": own / base <= 2,
        "note": (
            f"subprocess peak RSS {mem['measure'].get('peak_mb', math.nan):.0f} MB vs "
            f"{mem['step'].get('peak_mb', math.nan):.0f} MB, setup {mem['step'].get('before_mb', math.nan):.0f} MB"
            if "error" not in mem["measure"]
            else mem["measure"]["error"]
        ),
    }


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--peak":
        _peak_main(sys.argv[2], "--quick" in sys.argv)
