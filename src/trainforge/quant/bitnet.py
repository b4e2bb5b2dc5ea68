"""BitNet quantization-aware training: BitLinear, convert_to_bitnet, phase-in, regularizer, sparsity.

Weights (per tensor):
  ``weight_bits=1.58`` (BitNet b1.58): ``gamma = mean(|W|)``, ``W_q = clamp(round(W / (gamma + eps)), -1, 1) * gamma``;
  ``weight_bits=1`` (BitNet): ``alpha = mean(W)``, ``beta = mean(|W|)``, ``W_q = sign(W - alpha) * beta``
  (``W - alpha == 0`` counts as +1, so every weight is one of two values).
Activations (per token, ``act_bits`` b, 8 by default): ``Q = 2^(b-1)``, ``s = (Q - 1) / max(|x|)`` over the last
dim (the max clamped away from 0), ``x_q = clamp(round(x * s), -Q, Q - 1) / s``.
Training uses the straight-through estimator ``x + lam * (q(x) - x).detach()`` for both (as one
autograd node: value ``q(x)``, gradient the identity), so the latent full-precision weights receive
the dense gradient; ``lam`` is 1 except during phase-in, when it rises linearly 0 -> 1 (``lam = 0``
is exactly the dense layer). Training and evaluation compute the same values, so a model rebuilt
from the packed export gives identical outputs.

Nothing here reads a value back from the device: ``lam`` is a Python float set between steps from
the step counter (which the checkpoint holds), so a resumed run sees the same ``lam`` bit for bit.
"""

from __future__ import annotations

import fnmatch
import math
from functools import partial
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

WEIGHT_BITS = (1.0, 1.58)


def _round(t: torch.Tensor, stochastic: bool) -> torch.Tensor:
    # Stochastic rounding draws from the global torch RNG, which the checkpoint restores.
    return torch.floor(t + torch.rand_like(t)) if stochastic else torch.round(t)


def weight_scale(w: torch.Tensor, bits: float) -> torch.Tensor:
    """The per-tensor scale: ``mean(|W|)`` (gamma for 1.58 bits, beta for 1 bit)."""
    return w.abs().mean()


def weight_codes(w: torch.Tensor, bits: float, eps: float = 1e-5, stochastic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes in {-1, 0, 1} or {-1, 1} as w's dtype, scale) with ``W_q = codes * scale``."""
    scale = weight_scale(w, bits)
    if bits == 1:
        centred = w - w.mean()
        codes = torch.where(centred >= 0, torch.ones_like(w), -torch.ones_like(w))
    else:
        codes = _round(w / (scale + eps), stochastic).clamp(-1, 1)
    return codes, scale


def quantize_weight(w: torch.Tensor, bits: float, eps: float = 1e-5, stochastic: bool = False) -> torch.Tensor:
    codes, scale = weight_codes(w, bits, eps, stochastic)
    return codes * scale


def quantize_activation(x: torch.Tensor, bits: int = 8, eps: float = 1e-5, stochastic: bool = False) -> torch.Tensor:
    """Per-token absmax to ``bits`` bits over the last dim."""
    q = 2 ** (bits - 1)
    s = (q - 1) / x.abs().amax(dim=-1, keepdim=True).clamp(min=eps)
    return _round(x * s, stochastic).clamp(-q, q - 1) / s


class _StraightThrough(torch.autograd.Function):
    """Forward: the (quantized) value; backward: the gradient passed to ``x`` unchanged."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        return value

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ARG004
        return grad, None


def ste(x: torch.Tensor, quantize, lam: float = 1.0) -> torch.Tensor:
    """Straight-through: the value ``x + lam * (q(x) - x)`` (``q(x)`` when lam is 1), the gradient
    of the identity — ``x + lam * (q(x) - x).detach()`` in one autograd node. ``q`` runs without
    autograd (nothing of it is kept for backward), and training sees the very values evaluation does."""
    with torch.no_grad():
        q = quantize(x)
        if lam != 1.0:
            q = x + lam * (q - x)
    if torch.is_grad_enabled() and x.requires_grad:
        return _StraightThrough.apply(x, q)
    return q


class BitLinear(nn.Linear):
    """A drop-in ``nn.Linear`` whose forward quantizes weights (1.58 or 1 bit) and activations (8 bit).

    ``norm=True`` applies an RMSNorm (learned gain) to the input before activation quantization, as
    the BitNet b1.58 training notes do. ``stochastic`` rounds stochastically in training mode.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, weight_bits: float = 1.58,
                 act_bits: int | None = 8, norm: bool = False, stochastic: bool = False, eps: float = 1e-5,
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if float(weight_bits) not in WEIGHT_BITS:
            raise ValueError(f"BitLinear: weight_bits must be 1 or 1.58, got {weight_bits}")
        if act_bits is not None and not 2 <= int(act_bits) <= 16:
            raise ValueError(f"BitLinear: act_bits must be in [2, 16] or None, got {act_bits}")
        self.weight_bits = float(weight_bits)
        self.act_bits = None if act_bits is None else int(act_bits)
        self.stochastic = bool(stochastic)
        self.eps = float(eps)
        self.norm = nn.RMSNorm(in_features, eps=eps, device=device, dtype=dtype) if norm else None
        self.lam = 1.0  # phase-in blend, set between steps (a Python float: no device sync)
        self.frozen_weight: torch.Tensor | None = None  # set by load_bitnet: the exported W_q, used as is

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> "BitLinear":
        """A BitLinear holding ``linear``'s own weight and bias tensors (same Parameters, same values)."""
        w = linear.weight
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                    device=w.device, dtype=w.dtype, **kwargs)
        layer.weight = linear.weight
        if linear.bias is not None:
            layer.bias = linear.bias
        layer.train(linear.training)
        return layer

    def quantized_weight(self) -> torch.Tensor:
        if self.frozen_weight is not None:
            return self.frozen_weight
        stochastic = self.stochastic and self.training
        return quantize_weight(self.weight, self.weight_bits, self.eps, stochastic)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = self.lam
        if lam == 0.0 and self.frozen_weight is None:
            return F.linear(x if self.norm is None else self.norm(x), self.weight, self.bias)
        if self.norm is not None:
            x = self.norm(x)
        stochastic = self.stochastic and self.training
        if self.act_bits is not None:
            x = ste(x, partial(quantize_activation, bits=self.act_bits, eps=self.eps, stochastic=stochastic), lam)
        if self.frozen_weight is not None:
            w = self.frozen_weight
        else:
            w = ste(self.weight, partial(quantize_weight, bits=self.weight_bits, eps=self.eps, stochastic=stochastic), lam)
        return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, weight_bits={self.weight_bits:g}, act_bits={self.act_bits}, "
                f"norm={self.norm is not None}")


# -- conversion ----------------------------------------------------------------------------------

def _skipped(name: str, patterns: Iterable[str]) -> bool:
    """A pattern matches the qualified name (fnmatch) or any of its dotted parts (``lm_head``)."""
    parts = name.split(".")
    return any(fnmatch.fnmatchcase(name, p) or p in parts for p in patterns)


def convert_to_bitnet(model: nn.Module, weight_bits: float = 1.58, skip: Iterable[str] = ("lm_head",), *,
                      act_bits: int | None = 8, norm: bool = False, stochastic: bool = False,
                      eps: float = 1e-5) -> list[str]:
    """Swap every ``nn.Linear`` in ``model`` (in place) for a BitLinear holding the same weight tensors.

    Layers whose qualified name, or one of its dotted parts, matches a ``skip`` pattern stay full
    precision (the LM head by default; embeddings are never Linear). A Linear whose weight is shared
    with another module (tied embeddings) is skipped too: quantizing it would quantize the embedding.
    Already converted layers are left as they are. Returns the names of the converted layers.
    Run it before the optimizer is built: the Parameters are the same objects, so either order
    trains, but a converter that adds norm gains must precede the optimizer to have them trained.
    """
    skip = list(skip)
    counts: dict[int, int] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            counts[id(p)] = counts.get(id(p), 0) + 1
    converted: list[str] = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, BitLinear) or not isinstance(child, nn.Linear) or _skipped(full, skip):
                continue
            if counts.get(id(child.weight), 0) > 1:
                continue
            setattr(module, child_name, BitLinear.from_linear(child, weight_bits=weight_bits, act_bits=act_bits,
                                                              norm=norm, stochastic=stochastic, eps=eps))
            converted.append(full)
    return converted


def bit_layers(model: nn.Module) -> Iterator[tuple[str, BitLinear]]:
    for name, module in model.named_modules():
        if isinstance(module, BitLinear):
            yield name, module


def phase_in_lambda(step: int, phase_in_steps: int) -> float:
    """Linear 0 -> 1 over ``phase_in_steps`` optimizer steps (1 when phase-in is off)."""
    if phase_in_steps <= 0:
        return 1.0
    return min(1.0, max(0.0, step / phase_in_steps))


def set_phase_in(model: nn.Module, lam: float) -> None:
    if not 0.0 <= lam <= 1.0 or math.isnan(lam):
        raise ValueError(f"phase-in lambda must be in [0, 1], got {lam}")
    for _, layer in bit_layers(model):
        layer.lam = float(lam)


# -- regularizer and sparsity --------------------------------------------------------------------

def quantization_regularizer(model: nn.Module, target_sparsity: float | None = None) -> torch.Tensor:
    """Mean over BitLinear layers of ``mean(((W - T) / scale)^2)``: how far the latent weights are from
    their target grid points, in units of the layer's scale (dimensionless, so layers weigh alike).

    ``T`` is ``W_q`` — or, with ``target_sparsity`` s (ternary layers), the grid point with exactly a
    fraction s of zeros: the s smallest ``|W|`` go to 0 and the others to ``sign(W) * scale``. That
    pulls the zero fraction towards s from either side. Target and scale carry no gradient.
    """
    terms = []
    for _, layer in bit_layers(model):
        w = layer.weight
        with torch.no_grad():
            codes, scale = weight_codes(w, layer.weight_bits, layer.eps)
            if target_sparsity is not None and layer.weight_bits != 1:
                flat = w.detach().abs().reshape(-1)
                k = int(round(target_sparsity * flat.numel()))
                if k <= 0:
                    codes = torch.sign(w)
                elif k >= flat.numel():
                    codes = torch.zeros_like(w)
                else:
                    threshold = flat.kthvalue(k).values
                    codes = torch.where(w.abs() > threshold, torch.sign(w), torch.zeros_like(w))
            target = codes * scale
            denom = scale + layer.eps
        terms.append(((w - target) / denom).pow(2).mean())
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).mean()


def ternary_sparsity(model: nn.Module) -> torch.Tensor:
    """Fraction of zero codes over all ternary (1.58-bit) BitLinear weights, as a 0-dim tensor (no sync)."""
    zeros, total = [], 0
    with torch.no_grad():
        for _, layer in bit_layers(model):
            if layer.weight_bits == 1:
                continue
            w_q = layer.quantized_weight() if layer.frozen_weight is not None else quantize_weight(
                layer.weight, layer.weight_bits, layer.eps)
            zeros.append((w_q == 0).sum())
            total += w_q.numel()
    if not zeros:
        return torch.zeros(())
    return torch.stack(zeros).sum().double() / total
