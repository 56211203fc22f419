"""Recurrent layers: ``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` (any layers, directions, ``batch_first``, packed
sequences, initial states, LSTM ``proj_size``).

Every weight enters through a pre-activation that is linear in it, so its per-sample gradient is a sum over
time steps of outer products, an :class:`~noiseprobe.probes.factors.OuterFactor` per (layer, direction):

| parameters | L_it | R_it |
|---|---|---|
| ``weight_ih``, ``bias_ih`` | ∂ℓ/∂(W_ih x_t + b_ih), (N, T, G·H) | layer input x_it, and 1 |
| ``weight_hh``, ``bias_hh`` | ∂ℓ/∂(W_hh h_{t−1} + b_hh) | previous hidden state h_i,t−1, and 1 |
| ``weight_hr`` (LSTM ``proj_size``) | ∂ℓ/∂h_t, h_t = W_hr u_t | u_t = o_t ∘ tanh(c_t) |

(G = 4 gates for LSTM, 3 for GRU, 1 for RNN.) The per-step pre-activation gradients are obtained by running
torch's cell equations step by step on the call's captured inputs and initial states (weights as constants)
and one backward pass of Σ ⟨output, captured output gradient⟩ over the call's outputs (output, h_n, c_n).
The two pre-activations differ for GRU's candidate gate, n = tanh(W_in x + b_in + r ∘ (W_hn h + b_hn)).
Packed sequences run padded with per-sample lengths (a sample's state stops changing after its last step;
the reverse direction reads each sample backwards within its length), so padded steps contribute nothing.

In training mode with ``dropout > 0`` between layers the dropout mask cannot be replayed sample by sample:
refused with :class:`~noiseprobe.core.errors.NoPerSampleGradients`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from noiseprobe.core.errors import ConfigError, NoPerSampleGradients
from noiseprobe.probes.factors import Factor, Layout, OuterFactor
from noiseprobe.probes.rules.base import Call, Named, Rule, accumulation_dtype, register_rule


def _reverse(seq: Tensor, lengths: Tensor | None) -> Tensor:
    """Each sample of (N, T, F) read backwards within its length (padding stays at the end): an involution."""
    n, t = seq.shape[:2]
    if lengths is None:
        return seq.flip(1)
    steps = torch.arange(t, device=seq.device)[None]
    last = lengths.to(seq.device)[:, None] - 1
    idx = torch.where(steps <= last, last - steps, steps)
    return seq.gather(1, idx[..., None].expand(n, t, seq.shape[2]))


@register_rule(nn.LSTM, nn.GRU, nn.RNN)
class RecurrentRule(Rule[nn.RNNBase]):
    """nn.LSTM / nn.GRU / nn.RNN (module docstring)."""

    batch_axis_zero = False

    def validate(self, name: str, module: nn.RNNBase) -> None:
        if module.training and module.dropout > 0 and module.num_layers > 1:
            raise NoPerSampleGradients(
                name,
                f"{type(module).__name__}(dropout={module.dropout}) in training mode",
                "eval mode or dropout=0 (its random masks between layers cannot be replayed sample by sample)",
            )

    def factors(self, module: nn.RNNBase, call: Call, params: Named, n: int) -> list[tuple[Named, Factor]]:
        x, lengths, hx, dtype = self._inputs(module, call, n)
        weights = {name: p.detach().to(dtype) for name, p in module.named_parameters()}
        with torch.enable_grad():
            outputs, pieces = self._run(module, weights, x, lengths, hx)
            total = torch.stack([(o * g.to(dtype)).sum() for o, g in self._pairs(module, call, outputs)]).sum()
            wanted = [t for piece in pieces for t in piece[1::2]]
            grads = torch.autograd.grad(total, wanted, allow_unused=True)
        it = iter(g if g is not None else torch.zeros_like(t) for g, t in zip(grads, wanted))
        chosen = {name for name, _ in params}
        by_name = dict(params)
        out: list[tuple[Named, Factor]] = []
        for sfx, piece in zip(self._suffixes(module), pieces):
            groups = [("ih", piece[0]), ("hh", piece[2])] + ([("hr", piece[4])] if len(piece) > 4 else [])
            for kind, right in groups:
                left = next(it)
                names = [f"weight_{kind}_l{sfx}", f"bias_{kind}_l{sfx}"]
                names = [nm for nm in names if nm in chosen]
                if not names:
                    continue
                has_w, has_b = names[0].startswith("weight"), names[-1].startswith("bias")
                ones = [right.new_ones(*right.shape[:2], 1)] if has_b else []
                r = torch.cat(([right] if has_w else []) + ones, 2)
                layout = Layout(left.shape[2], right.shape[2], has_w, has_b)
                out.append(([(nm, by_name[nm]) for nm in names], OuterFactor(left.detach(), r.detach(), layout)))
        return out

    # -- the call's inputs and outputs ---------------------------------------------------------------

    @staticmethod
    def _suffixes(module: nn.RNNBase) -> list[str]:
        dirs = ["", "_reverse"][: 2 if module.bidirectional else 1]
        return [f"{layer}{d}" for layer in range(module.num_layers) for d in dirs]

    def _inputs(
        self, module: nn.RNNBase, call: Call, n: int
    ) -> tuple[Tensor, Tensor | None, list[Tensor | None], torch.dtype]:
        """The input (N, T, F) batch-first, the lengths of packed samples (None: all T), the initial states
        [h0, c0] (None where not given) and the accumulation dtype."""
        dtype = accumulation_dtype(call.grads[0])
        inp = call.args[0] if call.args else call.kwargs["input"]
        hx = call.args[1] if len(call.args) > 1 else call.kwargs.get("hx")
        lengths = None
        if isinstance(inp, PackedSequence):
            x, lengths = pad_packed_sequence(inp, batch_first=True)
        elif inp.dim() != 3:
            raise ConfigError(
                call.name, f"input of shape {tuple(inp.shape)}", "a batched 3-D input or a PackedSequence"
            )
        else:
            x = inp if module.batch_first else inp.transpose(0, 1)
        if x.shape[0] != n:
            raise ConfigError(
                call.name,
                f"input of shape {tuple(inp.data.shape if isinstance(inp, PackedSequence) else inp.shape)}",
                f"the batch of N = {n} on axis {0 if module.batch_first else 1} (batch_first={module.batch_first})",
            )
        states = list(hx) if isinstance(hx, (tuple, list)) else [hx]
        for s in states:
            if s is not None and (s.dim() != 3 or s.shape[1] != n):
                raise ConfigError(
                    call.name, f"initial state of shape {tuple(s.shape)}", f"the batch of N = {n} on axis 1"
                )
        if len(states) == 1 and module.mode == "LSTM":
            states.append(None)
        return x.detach().to(dtype), lengths, [s if s is None else s.detach().to(dtype) for s in states], dtype

    @staticmethod
    def _pairs(module: nn.RNNBase, call: Call, outputs: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """The rerun's tensors paired with the gradients of ``call.outputs`` (positions in the flattened
        output (output, h_n[, c_n])); a packed output's gradient padded as the rerun's output is."""
        out, states = outputs[0], outputs[1:]
        src = call.args[0] if call.args else call.kwargs["input"]
        first = 4 if isinstance(src, PackedSequence) else 1  # a PackedSequence flattens to 4 leaves
        pairs = []
        for pos, g in zip(call.positions, call.grads):
            if pos == 0 and isinstance(src, PackedSequence):
                packed = PackedSequence(g, src.batch_sizes, src.sorted_indices, src.unsorted_indices)
                pairs.append((out, pad_packed_sequence(packed, batch_first=True, total_length=out.shape[1])[0]))
            elif pos == 0:
                pairs.append((out if module.batch_first else out.transpose(0, 1), g))
            elif 0 <= pos - first < len(states):
                pairs.append((states[pos - first], g))
        return pairs

    # -- the cell equations ----------------------------------------------------------------------------

    def _run(
        self,
        module: nn.RNNBase,
        w: dict[str, Tensor],
        x: Tensor,
        lengths: Tensor | None,
        hx: list[Tensor | None],
    ) -> tuple[list[Tensor], list[list[Tensor]]]:
        """The layer's forward pass step by step: [output (N, T, D·H_out), h_n, (c_n)], and per (layer,
        direction) [input, ∂-handle of W_ih·x + b_ih, previous hidden states, ∂-handle of W_hh·h + b_hh,
        (projection input u, ∂-handle of h)]: the right factors and the tensors whose gradients are the left."""
        n, t = x.shape[:2]
        mode, proj = module.mode, getattr(module, "proj_size", 0)
        h_size, out_size = module.hidden_size, proj or module.hidden_size
        mask = None if lengths is None else (torch.arange(t)[None] < lengths[:, None]).to(x.device)[..., None]
        hn: list[Tensor] = []
        cn: list[Tensor] = []
        pieces: list[list[Tensor]] = []
        inp = x
        for layer in range(module.num_layers):
            outs = []
            for d, sfx in enumerate(["", "_reverse"][: 2 if module.bidirectional else 1]):
                k, s = len(hn), f"{layer}{sfx}"
                seq = inp if d == 0 else _reverse(inp, lengths)
                # zero tensors added to the pre-activations: their gradients are ∂ℓ/∂(W_ih x + b_ih), ∂ℓ/∂(W_hh h + b_hh)
                zi, zh = (x.new_zeros(n, t, w[f"weight_hh_l{s}"].shape[0], requires_grad=True) for _ in range(2))
                gi = seq @ w[f"weight_ih_l{s}"].T + zi
                if f"bias_ih_l{s}" in w:
                    gi = gi + w[f"bias_ih_l{s}"]
                zr = x.new_zeros(n, t, out_size, requires_grad=True) if proj else None
                h = x.new_zeros(n, out_size) if hx[0] is None else hx[0][k]
                c = (x.new_zeros(n, h_size) if hx[1] is None else hx[1][k]) if mode == "LSTM" else None
                hs, prev, us = [], [], []
                # unbind: one backward node per tensor for all steps (indexing [:, step] would add a full-size
                # gradient per step, T² work)
                gi_t, zh_t = gi.unbind(1), zh.unbind(1)
                zr_t = zr.unbind(1) if zr is not None else ()
                for step in range(t):
                    prev.append(h)
                    gh = h @ w[f"weight_hh_l{s}"].T + zh_t[step]
                    if f"bias_hh_l{s}" in w:
                        gh = gh + w[f"bias_hh_l{s}"]
                    a = gi_t[step]
                    c_new = None
                    if mode == "LSTM":
                        i, f, g, o = (a + gh).chunk(4, 1)
                        assert c is not None
                        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                        h_new = torch.sigmoid(o) * torch.tanh(c_new)
                        if zr is not None:
                            us.append(h_new)
                            h_new = h_new @ w[f"weight_hr_l{s}"].T + zr_t[step]
                    elif mode == "GRU":
                        ar, az, an = a.chunk(3, 1)
                        hr, hz, hn_ = gh.chunk(3, 1)
                        r, z = torch.sigmoid(ar + hr), torch.sigmoid(az + hz)
                        h_new = (1 - z) * torch.tanh(an + r * hn_) + z * h
                    else:
                        h_new = torch.tanh(a + gh) if mode == "RNN_TANH" else torch.relu(a + gh)
                    if mask is not None:
                        h_new = torch.where(mask[:, step], h_new, h)
                        if c_new is not None:
                            c_new = torch.where(mask[:, step], c_new, c)  # type: ignore[arg-type]
                    h, c = h_new, c_new
                    hs.append(h)
                out = torch.stack(hs, 1)
                outs.append(out if d == 0 else _reverse(out, lengths))
                hn.append(h)
                if c is not None:
                    cn.append(c)
                piece = [seq, zi, torch.stack(prev, 1), zh]
                if zr is not None:
                    piece += [torch.stack(us, 1), zr]
                pieces.append(piece)
            inp = torch.cat(outs, 2) if len(outs) > 1 else outs[0]
        if mask is not None:
            inp = inp * mask  # torch's padded output is zero after each sample's length
        states = [torch.stack(hn)] + ([torch.stack(cn)] if cn else [])
        return [inp, *states], pieces
