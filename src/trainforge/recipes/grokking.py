"""grokking: the algorithmic task of Power et al. 2022 as set up by Grokfast (Lee et al. 2024).

Every equation ``x op y = z (mod p)`` with x in [0, p), y in [1, p) (p = 97: 9,312 equations)
is a sequence of four tokens ``(x, op, y, eq)`` whose answer ``z`` the model predicts; loss and
accuracy are computed on the answer only. A random half of the equations (fixed by the seed)
trains, the other half validates. With no weight decay the model memorises the training half
within a few hundred steps and generalises ("groks") only tens of thousands of steps later;
Grokfast's gradient filter (``grokfast:`` in the config) brings that down to about a thousand.

The model is the paper's: a 2-layer causal transformer of width 128 with 4 heads, learned
positions, biases, PyTorch's default initialisation, an untied output head over ``p + 2`` tokens.
Its blocks keep the reference code's quirk (``x = ln_1(x); x = x + attn(x)``: the residual stream
passes through the first LayerNorm), since grokking's timing depends on such details. Ours:
attention over 4 tokens as a broadcast multiply-and-sum, and three shortcuts that compute the same
function with fewer operations (on a CPU, where a step is compute-bound; ``shared_prefix: 0``
turns them off): the model returns the logits of the last position only, so the last block
computes its query, attention output and MLP for that position alone; the first block's input
depends on (position, token) alone, so its LayerNorm, queries, keys, values and attention scores
are tables over the ~195 distinct pairs of a batch; and in the later blocks the positions 0-1,
which see only ``(x, op)``, are computed once per distinct x and their keys and values shared.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.loader import epoch_seed
from .base import RecipeParts, count_params, recipe_settings, settings_checked

OPERATIONS = ("mul", "add", "sub", "div")

RECIPE_ARGS: dict[str, Any] = {
    "p": 97,                  # the prime modulus
    "operation": "mul",       # mul | add | sub | div (x * y^-1): z = x op y mod p
    "train_fraction": 0.5,    # share of all equations used for training (the rest validates)
    "dim": 128,
    "n_layer": 2,
    "n_head": 4,
    "shared_prefix": 2,       # CPU: first block from (position, token) tables, positions 0-1 once per x; 0: off
    "train_accuracy": False,  # also measure train/accuracy on all training equations after each validation
}

# The Grokfast EMA run of the paper: the demo (`trainforge demo grokking`) stops at 95 % validation accuracy.
DEFAULTS: dict[str, Any] = {
    "max_steps": 20_000,
    "max_epochs": None,
    "batch_size": 512,                # 4,656 training equations: 10 optimizer steps per epoch
    "task": "classification",
    # The paper's code uses torch.optim.Adam: weight decay coupled (L2) on every parameter.
    "optimizer": {"name": "adam", "lr": 1e-3, "betas": [0.9, 0.98], "weight_decay": 0.005, "decay_all": True},
    "schedule": {"name": "linear", "warmup_steps": 10, "min_lr_ratio": 1.0},  # 10-step warmup, then constant
    "grad": {"clip_norm": None},
    "grokfast": {"filter": "ema", "alpha": 0.98, "lamb": 2.0},
    "milestones": {"val/accuracy": 0.95},
    "stop_on_milestone": "val/accuracy",
    "validation": {"every_epochs": 1, "batch_size": 16384},  # all held-out equations in one forward
    "checkpoint": {"every_epochs": 100, "keep_last": 2, "keep_best": 0},
    "log": {"every_steps": 50},
    "recipe_args": RECIPE_ARGS,
}


# -- data ------------------------------------------------------------------------------------

def equations(p: int = 97, operation: str = "mul") -> tuple[torch.Tensor, torch.Tensor]:
    """All equations: inputs ``[N, 4]`` = (x, op, y, eq) with op = p + 1, eq = p, and answers ``[N]``.

    N = p * (p - 1): x in [0, p), y in [1, p) (y = 0 is left out, as the paper's code does, so
    that division is defined for every operation)."""
    if p < 2 or any(p % d == 0 for d in range(2, math.isqrt(p) + 1)):
        raise ValueError(f"p must be a prime, got {p}")
    if operation not in OPERATIONS:
        raise ValueError(f"operation must be one of {', '.join(OPERATIONS)}, got {operation!r}")
    x, y = torch.cartesian_prod(torch.arange(p), torch.arange(1, p)).T
    if operation == "mul":
        z = x * y % p
    elif operation == "add":
        z = (x + y) % p
    elif operation == "sub":
        z = (x - y) % p
    else:  # x / y = x * y^(p-2) mod p (Fermat)
        inv = torch.tensor([pow(int(v), p - 2, p) for v in range(p)])
        z = x * inv[y] % p
    inputs = torch.stack([x, torch.full_like(x, p + 1), y, torch.full_like(x, p)], dim=1)
    return inputs, z


def split(inputs: torch.Tensor, answers: torch.Tensor, train_fraction: float = 0.5, seed: int = 0):
    """((x_train, y_train), (x_val, y_val)): a random split of the equations, fixed by ``seed``."""
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    n = inputs.shape[0]
    n_train = int(n * train_fraction)
    if not 0 < n_train < n:
        raise ValueError(f"train_fraction {train_fraction} leaves no equation on one side of {n}")
    g = torch.Generator().manual_seed(epoch_seed(seed, 0, salt=1401))
    perm = torch.randperm(n, generator=g)
    tr, va = perm[:n_train], perm[n_train:]
    return (inputs[tr], answers[tr]), (inputs[va], answers[va])


# -- model -----------------------------------------------------------------------------------

def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_head: int) -> torch.Tensor:
    """Causal multi-head attention of ``q`` [B, Tq, C] on ``k``/``v`` [B, Tk, C], query i at position
    Tk - Tq + i; [B, Tq, H, C / H]. Sequences here are 4 tokens: the scores are a few multiply-adds
    per head, so broadcasting and summing in the [B, T, H, D] layout (no transposes) beats
    ``F.scaled_dot_product_attention``'s kernel on a CPU (~20 % of a training step there), and
    ``einsum`` or ``matmul`` over (B, H) batches of 4 x 32 matrices (2-4x slower, measured)."""
    B, Tq, C = q.shape
    Tk, D = k.shape[1], C // n_head
    q, k, v = q.reshape(B, Tq, n_head, D), k.reshape(B, Tk, n_head, D), v.reshape(B, Tk, n_head, D)
    return mix((q.unsqueeze(2) * k.unsqueeze(1)).sum(-1) * D ** -0.5, v)


def mix(scores: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The heads' outputs [B, Tq, H, D] from the scores [B, Tq, Tk, H] of the queries at the last Tq
    positions against the Tk keys (future ones masked here) and the values ``v`` [B, Tk, H, D]."""
    Tq, Tk = scores.shape[1:3]
    if Tq > 1:
        future = torch.ones(Tq, Tk, dtype=torch.bool, device=scores.device).triu(Tk - Tq + 1)
        scores = scores.masked_fill(future[:, :, None], float("-inf"))
    return (scores.softmax(dim=2).unsqueeze(-1) * v.unsqueeze(1)).sum(2)


class Block(nn.Module):
    """The reference code's block: ``x = ln_1(x); x = x + attn(x); x = x + mlp(ln_2(x))``."""

    def __init__(self, dim: int, n_head: int):
        super().__init__()
        if dim % n_head:
            raise ValueError(f"dim ({dim}) must be divisible by n_head ({n_head})")
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(dim)
        self.ln_2 = nn.LayerNorm(dim)
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        # nn.MultiheadAttention's initialisation: Xavier-uniform q/k/v projection, zero biases.
        nn.init.xavier_uniform_(self.in_proj.weight)
        nn.init.zeros_(self.in_proj.bias)
        nn.init.zeros_(self.out_proj.bias)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(ln_1(x), q, k, v) for every position (row) of ``x``."""
        x = self.ln_1(x)
        return (x, *self.in_proj(x).split(x.shape[-1], dim=-1))

    def kv(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(ln_1(x), k, v): for positions whose query is not needed."""
        x, C = self.ln_1(x), x.shape[-1]
        k, v = F.linear(x, self.in_proj.weight[C:], self.in_proj.bias[C:]).split(C, dim=-1)
        return x, k, v

    def q(self, x: torch.Tensor) -> torch.Tensor:
        """The query of ``x`` = ln_1(input), as ``qkv`` computes it."""
        C = x.shape[-1]
        return F.linear(x, self.in_proj.weight[:C], self.in_proj.bias[:C])

    def finish(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The block's output at the last ``q.shape[1]`` positions of ``k``/``v`` (causal)."""
        return self.finish_attended(x, attend(q, k, v, self.n_head))

    def finish_attended(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The block's output from ``x`` = ln_1(input) and the attention's heads ``a`` [B, T, H, D]."""
        B, T = a.shape[:2]
        x = x + self.out_proj(a.reshape(B, T, -1))
        return x + self.mlp(self.ln_2(x))

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        x, q, k, v = self.qkv(x)
        if last_only:
            return self.finish(x[:, -1:], q[:, -1:], k, v)
        return self.finish(x, q, k, v)


def gather(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` through ``index_select``, whose backward (an index_add) is several times
    faster on a CPU than advanced indexing's (an accumulating index_put)."""
    return table.index_select(0, index.reshape(-1)).view(*index.shape, *table.shape[1:])


class Decoder(nn.Module):
    """``forward(tokens[B, T]) -> logits[B, vocab]`` of the last position (the answer's).

    ``shared_prefix``: on a CPU, the first block is computed from per-(position, token) tables and
    in every later block the first so many positions once per distinct prefix (see
    ``forward_shared_prefix``); 0 computes every row of every block."""

    # The first block's score table holds (distinct cells)^2 x heads floats: x op y mod p has at most
    # 2p + 2 cells (p = 97: ~152 k floats). Beyond this many, scores are computed per equation.
    max_score_table = 1 << 24

    def __init__(self, vocab: int, dim: int = 128, n_layer: int = 2, n_head: int = 4, seq_len: int = 5,
                 shared_prefix: int = 0):
        super().__init__()
        if vocab < 1 or dim < 1 or n_layer < 1:
            raise ValueError(f"vocab, dim and n_layer must be >= 1, got {vocab}, {dim}, {n_layer}")
        if not 0 <= shared_prefix < seq_len:
            raise ValueError(f"shared_prefix must be in [0, {seq_len}), got {shared_prefix}")
        if vocab ** max(shared_prefix, 1) >= 2 ** 62:
            raise ValueError(f"shared_prefix {shared_prefix} is too long for a vocabulary of {vocab}")
        self.vocab = vocab
        self.shared_prefix = shared_prefix
        self.token_embeddings = nn.Embedding(vocab, dim)
        self.position_embeddings = nn.Embedding(seq_len, dim)
        self.layers = nn.ModuleList(Block(dim, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        T = tokens.shape[1]
        # On a GPU, torch.unique would wait on the device every step; the shortcuts pay on a CPU.
        if 0 < self.shared_prefix < T and tokens.device.type == "cpu":
            return self.head(self.ln_f(self.forward_shared_prefix(tokens, self.shared_prefix)))
        h = self.token_embeddings(tokens) + self.position_embeddings(torch.arange(T, device=tokens.device))
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(h, last_only=i == last)
        return self.head(self.ln_f(h[:, -1]))

    def forward_shared_prefix(self, tokens: torch.Tensor, prefix: int) -> torch.Tensor:
        """The last position's output of the blocks: the same function as the plain loop, computed
        with two shortcuts.

        The first block's input at a position is a function of (position, token) alone, so its
        LayerNorm, queries, keys and values are computed once per distinct pair (x op y: 195 rows
        for a batch's 2,048 positions), the attention scores as a table of every query row against
        every key row, and each equation gathers its own. In the later blocks, the first ``prefix``
        positions see only their own prefix of tokens, so they are computed once per distinct prefix
        (97 distinct ``(x, op)`` among 512 equations) and their keys and values shared by the
        equations that start with it."""
        B, T = tokens.shape
        cells, cell = torch.unique(tokens + self.vocab * torch.arange(T, device=tokens.device), return_inverse=True)
        table = self.token_embeddings(cells % self.vocab) + self.position_embeddings(cells // self.vocab)
        first = self.layers[0]
        x_cell, q_cell, k_cell, v_cell = first.qkv(table)                   # [U, C]: one row per cell
        U, C = table.shape
        H = first.n_head
        scores = None
        if U * U * H <= self.max_score_table:  # [query cell * U + key cell, H]
            scores = torch.einsum("uhd,whd->uwh", q_cell.view(U, H, -1), k_cell.view(U, H, -1))
            scores = scores.reshape(U * U, H) * (C // H) ** -0.5

        def first_block(rows: torch.Tensor, n_query: int) -> torch.Tensor:
            """The first block's output at the last ``n_query`` positions of sequences of cells ``rows``."""
            queries = rows[:, -n_query:]
            if scores is None:  # too many cells for a table of every pair: per equation
                a = attend(gather(q_cell, queries), gather(k_cell, rows), gather(v_cell, rows), H)
            else:
                s = gather(scores, queries[:, :, None] * U + rows[:, None, :])             # [N, Tq, Tk, H]
                a = mix(s, gather(v_cell, rows).view(*rows.shape, H, -1))
            return first.finish_attended(gather(x_cell, queries), a)

        if len(self.layers) == 1:
            return first_block(cell, 1)[:, 0]
        key = tokens[:, 0]
        for i in range(1, prefix):  # the prefix as one integer (vocab ** prefix < 2 ** 62, checked at build)
            key = key * self.vocab + tokens[:, i]
        unique, inverse = torch.unique(key, return_inverse=True)
        one = torch.full((unique.shape[0],), B, dtype=torch.long, device=tokens.device)
        one.scatter_reduce_(0, inverse, torch.arange(B, device=tokens.device), reduce="amin")  # a row per prefix
        shared, rest = first_block(cell[one, :prefix], prefix), first_block(cell, T - prefix)
        for layer in self.layers[1:-1]:
            xp, qp, kp, vp = layer.qkv(shared)
            xs, qs, ks, vs = layer.qkv(rest)
            k, v = torch.cat([gather(kp, inverse), ks], dim=1), torch.cat([gather(vp, inverse), vs], dim=1)
            shared, rest = layer.finish(xp, qp, kp, vp), layer.finish(xs, qs, k, v)
        layer = self.layers[-1]  # the answer's position alone needs a query, an output and the MLP
        _, kp, vp = layer.kv(shared)
        xs, ks, vs = layer.kv(rest)
        k, v = torch.cat([gather(kp, inverse), ks], dim=1), torch.cat([gather(vp, inverse), vs], dim=1)
        return layer.finish(xs[:, -1:], layer.q(xs[:, -1:]), k, v)[:, 0]


# -- the recipe ------------------------------------------------------------------------------

def train_accuracy(inputs: torch.Tensor, answers: torch.Tensor):
    """An evaluator: accuracy (and loss) on all training equations, in one forward."""
    def evaluate(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        logits = model(inputs.to(device))
        y = answers.to(device)
        hits = (logits.argmax(-1) == y).sum()
        loss = F.cross_entropy(logits, y)
        return {"train/accuracy": float(hits) / y.numel(), "train/eval_loss": float(loss)}
    return evaluate


def build(cfg: Any) -> RecipeParts:
    a = recipe_settings(cfg, RECIPE_ARGS, "grokking")
    seed = int(getattr(cfg, "seed", 0))
    with settings_checked("grokking"):
        p = int(a["p"])
        inputs, answers = equations(p, str(a["operation"]))
        (x_tr, y_tr), (x_va, y_va) = split(inputs, answers, float(a["train_fraction"]), seed)
        with torch.random.fork_rng(devices=[]):  # init is a function of the seed; global RNG untouched
            torch.manual_seed(seed)
            model = Decoder(p + 2, int(a["dim"]), int(a["n_layer"]), int(a["n_head"]),
                            shared_prefix=int(a["shared_prefix"]))
    evaluators = [train_accuracy(x_tr, y_tr)] if a["train_accuracy"] else []
    return RecipeParts(
        model=model, train_data=(x_tr, y_tr), val_data=(x_va, y_va), task="classification",
        evaluators=evaluators,
        info={"task": f"x {a['operation']} y mod {p}", "train": len(y_tr), "val": len(y_va),
              "params": count_params(model)},
    )
