"""Small reference models for probes, tests and benchmarks: the layer mix of the models people train.

* :class:`GPT` (config :class:`GPTConfig`): a GPT-style decoder — token and position ``nn.Embedding``,
  pre-LayerNorm blocks of causal self-attention with ``nn.Linear`` q/k/v/o projections and a GELU MLP,
  a final LayerNorm and an output head tied to the token embedding (the same ``Parameter`` in
  ``tok.weight`` and ``head.weight``). ``model(ids, mask)`` takes integer ids (N, T) and an optional
  padding mask (N, T) (1 = token, 0 = padding) and returns logits (N, T, vocab). Attention is written
  out (matmul + softmax), so it has double backward on every device and works under ``torch.func``.
* :func:`small_cnn`: Conv1d/2d/3d with zero/reflect/replicate/circular padding, stride, dilation, groups
  and GroupNorm, then global average pooling and a Linear classifier.
* :class:`ResNetBlock` / :func:`small_resnet`: conv–BatchNorm–ReLU–conv–BatchNorm plus identity, the
  basic ResNet block (BatchNorm: use the model in eval mode for per-sample gradients).
* :func:`resnet18`: the ResNet-18 layout for 32×32 images (3×3 stem, four stages of two basic blocks,
  widths w, 2w, 4w, 8w, strided 1×1 projection shortcuts), BatchNorm or GroupNorm; torchvision's layer
  mix without depending on torchvision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.validation import check_int


@dataclass(frozen=True)
class GPTConfig:
    """vocab: vocabulary size; width: model width; heads: attention heads (divide width); layers: blocks;
    T: longest sequence (position table size); mlp: MLP hidden width as a multiple of width."""

    vocab: int = 512
    width: int = 256
    heads: int = 4
    layers: int = 4
    T: int = 128
    mlp: int = 4

    def __post_init__(self) -> None:
        for name in ("vocab", "width", "heads", "layers", "T", "mlp"):
            check_int(name, getattr(self, name), lo=1)
        if self.width % self.heads:
            raise ConfigError("heads", self.heads, f"a divisor of width = {self.width}")


class CausalSelfAttention(nn.Module):
    """softmax(q kᵀ/√d + mask) v per head, q/k/v/o separate ``nn.Linear`` layers; a query attends to the
    earlier non-padding keys and always to itself (so no row is empty under left padding)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        n, t, w = x.shape
        h, d = self.heads, w // self.heads

        def split(z: Tensor) -> Tensor:
            return z.view(n, t, h, d).transpose(1, 2)  # (N, h, T, d)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        allowed = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()  # (T_query, T_key)
        if mask is not None:
            eye = torch.eye(t, dtype=torch.bool, device=x.device)
            allowed = allowed & (mask.bool()[:, None, None, :] | eye)  # (N, 1, T, T)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d)
        att = att.masked_fill(~allowed, float("-inf")).softmax(-1)
        out: Tensor = self.o((att @ v).transpose(1, 2).reshape(n, t, w))  # nn.Module calls are typed Any
        return out


class Block(nn.Module):
    """x + attn(LN(x)), then x + MLP(LN(x)) (pre-LayerNorm transformer block)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.width), nn.LayerNorm(cfg.width)
        self.attn = CausalSelfAttention(cfg.width, cfg.heads)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.width, cfg.mlp * cfg.width), nn.GELU(), nn.Linear(cfg.mlp * cfg.width, cfg.width)
        )

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.ln1(x), mask)
        out: Tensor = x + self.mlp(self.ln2(x))
        return out


class GPT(nn.Module):
    """GPT-style decoder; ``forward(ids, mask=None)`` → logits (N, T, vocab). See the module docstring."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok, self.pos = nn.Embedding(cfg.vocab, cfg.width), nn.Embedding(cfg.T, cfg.width)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.vocab, bias=False)
        self.head.weight = self.tok.weight  # tied output head
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, ids: Tensor, mask: Tensor | None = None) -> Tensor:
        t = ids.shape[1]
        if t > self.cfg.T:
            raise ConfigError("ids", f"sequences of length {t}", f"length <= T = {self.cfg.T}")
        x = self.tok(ids) + self.pos(torch.arange(t, device=ids.device)[None])  # (1, T): shared by the batch
        for block in self.blocks:
            x = block(x, mask)
        logits: Tensor = self.head(self.ln(x))
        return logits


def token_batch(
    cfg: GPTConfig, n: int, t: int | None = None, seed: int = 0, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Random next-token data for :class:`GPT`: ids (N, T), targets (N, T) (ids shifted by one) and a
    right-padding mask (N, T) with sequence lengths uniform in [T/2, T] (padding ids are 0)."""
    t = cfg.T if t is None else check_int("t", t, lo=2, hi=cfg.T)
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(0, cfg.vocab, (n, t + 1), generator=g)
    lengths = torch.randint(t // 2, t + 1, (n,), generator=g)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    ids, targets = seq[:, :-1] * mask, seq[:, 1:] * mask
    return ids.to(device), targets.to(device), mask.to(device)


_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def small_cnn(dim: int = 2, channels: int = 3, classes: int = 5, width: int = 8) -> nn.Sequential:
    """A CNN over ``dim``-dimensional inputs (N, channels, *spatial) exercising every convolution option:
    reflect padding; stride 2 with dilation 2, groups 2 and circular padding; 'same' replicate padding;
    zero padding without bias; GroupNorm after each convolution; average pooling; a Linear head.
    ``width`` must be even (groups = 2)."""
    dim = check_int("dim", dim, lo=1, hi=3)
    if width % 2 or width < 2:
        raise ConfigError("width", width, "an even integer >= 2")
    conv = _CONV[dim]
    pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[dim]
    return nn.Sequential(
        conv(channels, width, 3, padding=1, padding_mode="reflect"),
        nn.GroupNorm(2, width),
        nn.Tanh(),
        conv(width, width, 3, stride=2, padding=2, dilation=2, groups=2, padding_mode="circular"),
        nn.GroupNorm(4 if width % 4 == 0 else 2, width),
        nn.Tanh(),
        conv(width, width, 3, padding="same", padding_mode="replicate"),
        nn.Tanh(),
        conv(width, width, 2, padding=1, bias=False),
        nn.Tanh(),
        pool(1),
        nn.Flatten(),
        nn.Linear(width, classes),
    )


class ResNetBlock(nn.Module):
    """relu(x + BN(conv(relu(BN(conv(x)))))): the basic ResNet block (3×3 convolutions, zero padding)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


def small_resnet(channels: int = 3, width: int = 8, blocks: int = 1, classes: int = 5) -> nn.Sequential:
    """Stem conv + BatchNorm, ``blocks`` :class:`ResNetBlock`, average pooling, Linear head (images
    (N, channels, H, W)). Call ``.eval()`` before computing per-sample gradients (BatchNorm statistics)."""
    blocks = check_int("blocks", blocks, lo=1)
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        *(ResNetBlock(width) for _ in range(blocks)),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, classes),
    )


class BasicBlock(nn.Module):
    """relu(shortcut(x) + norm(conv(relu(norm(conv(x)))))), the first conv strided; the shortcut is the
    identity, or a strided 1×1 conv + norm where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _norm(norm, cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(norm, cout))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.shortcut(x) + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


def _norm(norm: str, width: int) -> nn.Module:
    return nn.BatchNorm2d(width) if norm == "batch" else nn.GroupNorm(min(32, width // 2), width)


def resnet18(channels: int = 3, classes: int = 10, width: int = 64, norm: str = "batch") -> nn.Sequential:
    """ResNet-18 for 32×32 images (CIFAR form: 3×3 stem, no max-pool): stages of 2 :class:`BasicBlock`
    at widths w, 2w, 4w, 8w (strides 1, 2, 2, 2), average pooling, Linear head; 11.2 M parameters at
    w = 64. ``norm``: "batch" (BatchNorm2d) or "group" (GroupNorm, min(32, c/2) groups)."""
    width = check_int("width", width, lo=2)
    if norm not in ("batch", "group"):
        raise ConfigError("norm", norm, "'batch' or 'group'")
    layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, 1, 1, bias=False), _norm(norm, width), nn.ReLU()]
    cin = width
    for stage in range(4):
        cout = width * 2**stage
        layers += [BasicBlock(cin, cout, 1 if stage == 0 else 2, norm), BasicBlock(cout, cout, 1, norm)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))
