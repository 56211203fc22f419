"""The "Which models" table of docs/monitor.md, measured: for each model family people train, the estimator
the monitor chooses (``estimator="auto"``, read from the history row's ``estimator`` column), the cost of
one default measurement (``mon.measure``: tr Σ, |G|², B_simple ± interval, temperature, top-10 of C)
against one unmonitored training step (forward, backward, AdamW step) of the same batch — median times of
rounds interleaved in one process — and the peak memory each adds above the RSS after building model,
optimizer state and data (a fresh subprocess per computation, as bench_transformer; the measurement after
one warm-up measurement, so that lazy imports are not counted). Small configs with
random weights (transformers models built from their configs), float32, CPU, one torch thread; DDP: two gloo
processes on one machine, each with half the batch (times and memory of rank 0). Two refusals are measured
too: FSDP at construction, and ``estimator="per-sample"`` on BatchNorm in train mode (the row's status).
Informational rows (no aims): the table in docs/monitor.md quotes them.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from bench_transformer import _vm
from noiseprobe import NoiseMonitor
from noiseprobe.models import resnet18
from noiseprobe.probes.sample_losses import TokenMeanCrossEntropy

token_ce = TokenMeanCrossEntropy()


def ce(out: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(out, y, reduction="none")


class Case:
    """One model family: the model as trained, its loss and batch, how the monitor is built; ``context``
    wraps the step and the measurement (autocast). A plain class: run.py loads this file outside
    ``sys.modules``, where dataclasses cannot resolve annotations."""

    def __init__(
        self,
        label: str,
        model: nn.Module,
        loss_fn: Callable[[Any, Any], Tensor],
        x: Any,
        y: Any,
        forward: Callable[[nn.Module, Any], Tensor] | None = None,
        monitor_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.label, self.model, self.loss_fn, self.x, self.y, self.forward = label, model, loss_fn, x, y, forward
        self.monitor_kwargs = monitor_kwargs or {}
        self.context: Callable[[], AbstractContextManager[Any]] = nullcontext

    def setup(self) -> dict[str, Callable[[], Any]]:
        """The two timed computations (a training step; a default measurement, returning its row), after
        one step so that the optimizer state exists."""
        call = self.forward or (lambda m, x: m(x))
        opt = torch.optim.AdamW(self.model.parameters(), lr=0.0)  # lr 0: every round sees the same weights
        mon = NoiseMonitor(self.model, self.loss_fn, every=1, forward=self.forward, **self.monitor_kwargs)

        def step() -> None:
            opt.zero_grad()
            with self.context():
                loss = self.loss_fn(call(self.model, self.x), self.y).mean()
            loss.backward()
            opt.step()

        def measure() -> dict[str, Any]:
            with self.context():
                return mon.measure((self.x, self.y), opt)

        step()
        return {"step": step, "measure": measure}


def _tokens(vocab: int, n: int, t: int, seed: int = 1) -> Tensor:
    return torch.randint(0, vocab, (n, t + 1), generator=torch.Generator().manual_seed(seed))


def _mlp(quick: bool) -> nn.Module:
    width = 64 if quick else 1024
    return nn.Sequential(nn.Linear(784, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))


def mlp(quick: bool, label: str = "MLP 784-1024-1024-10") -> Case:
    torch.manual_seed(0)
    n = 16 if quick else 1024
    return Case(f"{label}, N={n}", _mlp(quick), ce, torch.randn(n, 784), torch.randint(0, 10, (n,)))


def compiled(quick: bool) -> Case:
    case = mlp(quick, "torch.compile(MLP 784-1024-1024-10), inductor")
    case.model = torch.compile(case.model, backend="eager" if quick else "inductor")
    return case


def autocast(quick: bool) -> Case:
    case = mlp(quick, "MLP 784-1024-1024-10 under autocast(bfloat16), step and measurement")
    case.context = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    return case


def _resnet(quick: bool, train: bool, label: str, **kwargs: Any) -> Case:
    torch.manual_seed(0)
    width, n = (8, 8) if quick else (16, 32)
    model = resnet18(width=width, norm="batch").train(train)
    x, y = torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,))
    return Case(f"{label} (noiseprobe.models.resnet18, width {width}), 32×32, N={n}", model, ce, x, y, **kwargs)


def cnn_eval(quick: bool) -> Case:
    return _resnet(quick, False, "CNN, BatchNorm in eval mode")


def resnet_bn_train(quick: bool) -> Case:
    return _resnet(quick, True, "ResNet, BatchNorm in train mode")


def resnet_bn_train_per_sample(quick: bool) -> Case:
    return _resnet(
        quick,
        True,
        'ResNet, BatchNorm in train mode, estimator="per-sample"',
        monitor_kwargs={"estimator": "per-sample"},
    )


def _logits(m: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    out: Tensor = m(**batch).logits
    return out


def _lm_case(label: str, model: nn.Module, vocab: int, n: int, t: int) -> Case:
    ids = _tokens(vocab, n, t)
    return Case(f"{label}, N={n}, T={t}", model, token_ce, {"input_ids": ids[:, :-1]}, ids[:, 1:], forward=_logits)


def gpt2(quick: bool) -> Case:
    from transformers import GPT2Config, GPT2LMHeadModel

    width, layers, vocab, n, t = (32, 1, 256, 4, 16) if quick else (128, 2, 8192, 8, 64)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=vocab, n_embd=width, n_layer=layers, n_head=4, n_positions=t, tie_word_embeddings=True)
    return _lm_case(
        f"transformers GPT-2 ({layers}×{width}, vocab {vocab}, tied head, dropout 0.1)",
        GPT2LMHeadModel(cfg).train(),
        vocab,
        n,
        t,
    )


def llama(quick: bool) -> Case:
    from transformers import LlamaConfig, LlamaForCausalLM

    width, layers, vocab, n, t = (32, 1, 256, 4, 16) if quick else (128, 2, 8192, 8, 64)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=t,
        tie_word_embeddings=True,
    )
    label = f"transformers Llama ({layers}×{width}, RMSNorm, grouped-query attention, vocab {vocab}, tied head)"
    return _lm_case(label, LlamaForCausalLM(cfg).train(), vocab, n, t)


def bert(quick: bool) -> Case:
    from transformers import BertConfig, BertForSequenceClassification

    width, layers, vocab, n, t = (32, 1, 256, 4, 16) if quick else (128, 2, 8192, 16, 64)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=vocab,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=4 * width,
        max_position_embeddings=t,
        num_labels=3,
    )
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, vocab, (n, t), generator=g)
    lengths = torch.randint(t // 4, t + 1, (n,), generator=g)
    mask = (torch.arange(t)[None] < lengths[:, None]).long()
    ids = ids * mask  # padding id 0 after each sequence's length
    batch = {"input_ids": ids, "attention_mask": mask}
    label = f"transformers BERT ({layers}×{width}, vocab {vocab}, dropout 0.1), padded to T={t}, N={n}"
    y = torch.randint(0, 3, (n,), generator=g)
    return Case(label, BertForSequenceClassification(cfg).train(), ce, batch, y, forward=_logits)


class RecurrentLM(nn.Module):
    """Embedding → ``cell`` (2 layers, batch_first) → Linear over the vocabulary, every position."""

    def __init__(self, cell: type[nn.RNNBase], vocab: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, hidden)
        self.rnn = cell(hidden, hidden, num_layers=2, batch_first=True, dropout=dropout)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, ids: Tensor) -> Tensor:
        out: Tensor = self.head(self.rnn(self.emb(ids))[0])
        return out


def _recurrent(cell: type[nn.RNNBase], dropout: float, train: bool, quick: bool) -> Case:
    torch.manual_seed(0)
    vocab, hidden, n, t = (50, 16, 8, 8) if quick else (4000, 128, 64, 35)
    ids = _tokens(vocab, n, t)
    mode = f"dropout {dropout}, {'train' if train else 'eval'} mode"
    label = f"{cell.__name__} LM (2 layers, hidden {hidden}, vocab {vocab}, {mode}), N={n}, T={t}"
    return Case(label, RecurrentLM(cell, vocab, hidden, dropout).train(train), token_ce, ids[:, :-1], ids[:, 1:])


class DropConnectLinear(nn.Module):
    """A Linear layer whose weight is dropped out in train mode (its own parameters, no layer rule, random
    numbers drawn in its forward)."""

    def __init__(self, d_in: int, d_out: int, p: float) -> None:
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)
        self.weight, self.bias, self.p = self.lin.weight, self.lin.bias, p
        del self.lin

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, F.dropout(self.weight, self.p, self.training), self.bias)


class _ReLU(torch.autograd.Function):
    """A custom autograd Function without a vmap rule."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return g * (x > 0)


class GatedReLU(nn.Module):
    """y = w ∘ relu(x) through :class:`_ReLU`: its own parameter, no layer rule."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = _ReLU.apply(x) * self.w
        return out


def _mlp_with(quick: bool, middle: nn.Module, label: str) -> Case:
    """The MLP case with its middle Linear layer replaced by ``middle``."""
    case = mlp(quick, label)
    case.model[2] = middle
    return case


def dropconnect(quick: bool) -> Case:
    width = 64 if quick else 1024
    return _mlp_with(quick, DropConnectLinear(width, width, 0.1), "MLP 784-1024-1024-10, middle layer DropConnect 0.1")


def custom_function(quick: bool) -> Case:
    width = 64 if quick else 1024
    return _mlp_with(
        quick,
        nn.Sequential(nn.Linear(width, width), GatedReLU(width)),
        "MLP 784-1024-1024-10 with a custom autograd.Function in a module with parameters",
    )


#: row key: the builder of its model family
CASES: dict[str, Callable[[bool], Case]] = {
    "mlp": mlp,
    "cnn-bn-eval": cnn_eval,
    "resnet-bn-train": resnet_bn_train,
    "gpt2": gpt2,
    "bert-padded": bert,
    "llama": llama,
    "lstm-train-dropout0": lambda q: _recurrent(nn.LSTM, 0.0, True, q),
    "gru-train-dropout0": lambda q: _recurrent(nn.GRU, 0.0, True, q),
    "rnn-train-dropout0": lambda q: _recurrent(nn.RNN, 0.0, True, q),
    "lstm-eval-dropout": lambda q: _recurrent(nn.LSTM, 0.2, False, q),
    "lstm-train-dropout": lambda q: _recurrent(nn.LSTM, 0.2, True, q),
    "dropconnect-train": dropconnect,
    "custom-function": custom_function,
    "compiled": compiled,
    "autocast-bf16": autocast,
    "resnet-bn-train-forced-per-sample": resnet_bn_train_per_sample,
}


def _times(fns: dict[str, Callable[[], Any]], rounds: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Median seconds of each computation over interleaved rounds (after one warm-up call each) and the
    last measurement's row."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fns["step"]()
        row = fns["measure"]()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - t0)
            row = out if name == "measure" else row
    row["warnings"] = sorted({str(w.message).removeprefix("noiseprobe monitor: ")[:240] for w in caught})
    return {k: statistics.median(v) for k, v in times.items()}, row


def _peak_main(name: str, what: str, quick: bool) -> None:
    """Subprocess body: build the case (one training step done), run the computation once more if it is the
    measurement (lazy imports and one-time set-up are not its cost), reset the peak-RSS mark (Linux
    ``clear_refs`` 5), run the computation, print the RSS before it, the peak during it and their
    difference (MB)."""
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    fn = CASES[name](quick).setup()[what]
    if what == "measure":
        fn()
    before = _vm("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    fn()
    peak = _vm("VmHWM")
    print(json.dumps({"before_mb": before, "peak_mb": peak, "own_mb": peak - before}))


def peak_memory(name: str, what: str, quick: bool) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peak", name, what] + (["--quick"] if quick else [])
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=1800)
    if out.returncode:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _rows(key: str, label: str, t: dict[str, float], row: dict[str, Any], mem: dict[str, dict] | None) -> list[dict]:
    """The time row and the memory row of one model family."""
    estimator = row.get("estimator")
    b = row.get("micro_batch_size")
    status = row.get("status", "?")
    how = f"estimator {estimator}" + (f", micro-batch size {b}" if estimator == "micro-batch" else "")
    note = f"{how}; status {status}" + (f"; warned: {' | '.join(row['warnings'])}" if row.get("warnings") else "")
    common = {"case": key, "estimator": estimator, "status": status, "baseline": "one AdamW training step"}
    if status != "ok":  # refused (a status, not an exception): no cost to report
        return [
            {
                **common,
                "name": f"default measurement ({label})",
                "measured": None,
                "baseline_value": t["step"],
                "ratio": None,
                "unit": "s",
                "target": "info",
                "aim_met": None,
                "note": note,
            }
        ]
    rows = [
        {
            **common,
            "name": f"default measurement: time ({label})",
            "measured": t["measure"],
            "baseline_value": t["step"],
            "ratio": t["measure"] / t["step"],
            "unit": "s",
            "target": "info",
            "aim_met": None,
            "note": f"{note}; median of interleaved rounds, one process",
        }
    ]
    if mem is not None:
        own, base = mem["measure"].get("own_mb"), mem["step"].get("own_mb")
        errors = [m["error"] for m in mem.values() if "error" in m]
        rows.append(
            {
                **common,
                "name": f"default measurement: peak memory ({label})",
                "measured": own,
                "baseline_value": base,
                "ratio": None if errors or not base else own / base,
                "unit": "MB above setup",
                "target": "info",
                "aim_met": None,
                "note": errors[0]
                if errors
                else f"subprocess peak RSS {mem['measure']['peak_mb']:.0f} MB vs {mem['step']['peak_mb']:.0f} MB, "
                f"setup {mem['step']['before_mb']:.0f} MB",
            }
        )
    return rows


# -- DDP (gloo, 2 processes) and FSDP -------------------------------------------------------------------------
WORLD = 2


def _ddp_worker(rank: int, init: str, out: str, what: str, quick: bool, rounds: int) -> None:
    """One rank: the MLP case wrapped in DDP, this rank's half of the batch; ``what``: "time" (interleaved
    rounds, and FSDP's refusal) or a computation whose peak memory rank 0 reports."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=WORLD)
    case = mlp(quick)
    half = slice(rank * len(case.y) // WORLD, (rank + 1) * len(case.y) // WORLD)
    case.model, case.x, case.y = nn.parallel.DistributedDataParallel(case.model), case.x[half], case.y[half]
    fns = case.setup()
    result: dict[str, Any] = {}
    if what == "time":
        result["times"], result["row"] = _times(fns, rounds)
        from torch.distributed.fsdp import fully_shard

        try:
            NoiseMonitor(fully_shard(_mlp(quick)), ce)
            result["fsdp"] = "accepted"
        except Exception as err:  # noqa: BLE001 — the refusal is what this row reports
            result["fsdp"] = f"{type(err).__name__}: {err}"
    else:
        if what == "measure":
            fns[what]()
        before = _vm("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        fns[what]()
        peak = _vm("VmHWM")
        result = {"before_mb": before, "peak_mb": peak, "own_mb": peak - before}
    if rank == 0:
        Path(out).write_text(json.dumps(result, default=str))
    dist.destroy_process_group()


def _ddp_main(what: str, quick: bool, rounds: int) -> None:
    """Subprocess body: spawn the 2-process group, print rank 0's result."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "out.json")
        mp.start_processes(
            _ddp_worker, args=(os.path.join(d, "init"), out, what, quick, rounds), nprocs=WORLD, start_method="spawn"
        )
        print(Path(out).read_text())


def _ddp_run(what: str, quick: bool, rounds: int) -> dict[str, Any]:
    """The group is spawned from a fresh ``python bench_models.py --ddp`` process: spawn pickles the worker by
    module name, and run.py loads this file outside ``sys.modules``."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--ddp", what, str(rounds)] + (["--quick"] if quick else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=1800)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def ddp_rows(quick: bool, rounds: int) -> list[dict]:
    n = mlp(quick).y.shape[0]
    timed = _ddp_run("time", quick, rounds)
    mem = None if quick else {what: _ddp_run(what, quick, rounds) for what in ("step", "measure")}
    label = f"DDP (gloo, 2 processes) of MLP 784-1024-1024-10, N={n // WORLD} per rank"
    rows = _rows("ddp", label, timed["times"], timed["row"], mem)
    fsdp = timed["fsdp"]
    rows.append(
        {
            "case": "fsdp",
            "estimator": None,
            "status": "refused" if fsdp != "accepted" else "accepted",
            "name": "FSDP (fully_shard of the MLP, gloo, 2 processes): NoiseMonitor construction",
            "measured": None,
            "baseline": "",
            "baseline_value": None,
            "ratio": None,
            "unit": "",
            "target": "info",
            "aim_met": None,
            "note": fsdp.splitlines()[0],
        }
    )
    return rows


def run(quick: bool = False, cases: tuple[str, ...] = tuple(CASES), ddp: bool = True) -> list[dict]:
    """Every row (``cases``, then DDP and FSDP when ``ddp``); ``quick``: tiny sizes, one round, no memory."""
    torch.set_num_threads(1)
    rounds = 1 if quick else 5
    rows: list[dict] = []
    for key in cases:
        case = CASES[key](quick)
        label = case.label
        t, row = _times(case.setup(), rounds)
        del case
        mem = (
            None if quick or row.get("status") != "ok" else {w: peak_memory(key, w, quick) for w in ("step", "measure")}
        )
        rows += _rows(key, label, t, row, mem)
    return rows + (ddp_rows(quick, rounds) if ddp else [])


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "--ddp":
        _ddp_main(sys.argv[2], "--quick" in sys.argv, int(sys.argv[3]))
    elif len(sys.argv) >= 4 and sys.argv[1] == "--peak":
        _peak_main(sys.argv[2], sys.argv[3], "--quick" in sys.argv)
    else:
        chosen = tuple(a for a in sys.argv[1:] if a in CASES) or tuple(CASES)
        for r in run("--quick" in sys.argv, chosen):
            print(json.dumps(r, default=str))
