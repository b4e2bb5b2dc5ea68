"""graph_walks, the default demo: learn random walks on a block graph whose "jumper" vertices
carry a rule, then prove it by generating walks that obey the edges and the rules.

The graph is block-structured (stochastic block model: ``n_vertices`` in ``n_blocks`` equal
blocks, edge probability ``p_in`` within a block and ``p_out`` between blocks, undirected, no
self-loops). ``n_jumpers`` vertices are jumpers, each with a target block other than its own; the
rule: a walk that visits a jumper at step t is in the jumper's target block at step t + r.

The corpus obeys every edge and every rule. At a jumper the walk plans its next r steps: each
step it moves to a uniformly chosen neighbour from which the target block is still reachable in
the steps left, through non-jumper vertices (so two plans never overlap; the vertex at the
deadline may itself be a jumper and start the next plan). ``make_graph`` only accepts jumpers
for which such a path exists, so generation never gets stuck.

Training data are windows of ``context + 1`` tokens cut from each training walk separately
(``TokenWindowDataset`` per walk, stride ``context``), so no window spans two walks and invents a
transition that is not an edge. The vocabulary is the vertex ids; nothing else is needed since
every walk has the same length. A held-out split of walks gives the validation loss, and its
start vertices seed the greedy generations the evaluator scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from ..data.loader import epoch_seed
from ..data.tokens import TokenWindowDataset
from .base import RecipeParts, recipe_settings, settings_checked
from .gpt import GPT, generate

RECIPE_ARGS: dict[str, Any] = {
    # graph
    "n_vertices": 100,
    "n_blocks": 4,
    "p_in": 0.25,
    "p_out": 0.02,
    "n_jumpers": 20,      # 1 vertex in 5: greedy walks meet jumpers often, so the rule score rests on evidence
    "r": 4,               # steps from a jumper to its target block
    # corpus
    "n_walks": 10000,     # training walks (fewer overfit: the rule is the data-hungry part)
    "n_heldout": 300,     # held-out walks: validation loss, and start vertices for generation
    "walk_length": 33,    # = context + 1: one training window per walk
    # model
    "context": 32,
    "stride": None,       # window stride within a walk; default: context
    "n_layer": 2,
    "n_head": 4,
    "n_embd": 128,
    "dropout": 0.0,
    # evaluation
    "n_eval_walks": 1000,
    "eval_length": 64,    # length of generated walks (start vertex included); longer than the context,
                          # so generation slides its window; null: walk_length
}

DEFAULTS: dict[str, Any] = {
    "max_epochs": 50,
    "batch_size": 64,
    "task": "language_model",
    "optimizer": {"name": "adamw", "lr": 3e-4, "weight_decay": 0.01},
    "schedule": {"name": "warmup_cosine", "warmup": 0.1, "min_lr_ratio": 0.1},
    "grad": {"clip_norm": 1.0},
    "gate": {"eval/edge_compliance": "> 0.95", "eval/rule_compliance": "> 0.80"},
    "checkpoint": {"every_epochs": 1, "keep_last": 3},
    "validation": {"every_epochs": 1},
    "recipe_args": RECIPE_ARGS,
}


def tiny_args() -> dict[str, Any]:
    """``recipe_args`` for a fast run (CLI tests): a smaller graph and corpus that still pass the gate."""
    return {**RECIPE_ARGS, "n_vertices": 40, "p_in": 0.4, "p_out": 0.05, "n_jumpers": 8, "n_walks": 3000,
            "n_heldout": 200, "walk_length": 17, "context": 16, "eval_length": 32, "n_embd": 64}


# -- the graph --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Graph:
    """A block graph with jumper rules. Tensors live on the CPU."""

    adj: torch.Tensor     # [n, n] bool, symmetric, no self-loops
    block: torch.Tensor   # [n] int64, block of each vertex
    target: torch.Tensor  # [n] int64, target block of a jumper, -1 for other vertices
    n_blocks: int
    r: int

    @property
    def n_vertices(self) -> int:
        return int(self.block.numel())

    @property
    def jumpers(self) -> torch.Tensor:
        return torch.nonzero(self.target >= 0).flatten()


def plan_sets(adj: torch.Tensor, block: torch.Tensor, is_jumper: torch.Tensor, n_blocks: int, r: int) -> torch.Tensor:
    """``ok[b, s, v]``: from v, block b can be reached in exactly s steps through non-jumpers.

    ``ok[b, 0]`` is block b itself; for s >= 1, v must be a non-jumper (a plan never visits a
    jumper before its deadline) with a neighbour in ``ok[b, s - 1]``. Shape ``[n_blocks, r, n]``.
    """
    ok = torch.zeros(n_blocks, r, block.numel(), dtype=torch.bool)
    ok[:, 0] = block[None, :] == torch.arange(n_blocks)[:, None]
    a = adj.float()
    for s in range(1, r):
        reach = (ok[:, s - 1].float() @ a.T) > 0  # reach[b, v] = any_u adj[v, u] and ok[b, s-1, u]
        ok[:, s] = reach & ~is_jumper[None, :]
    return ok


def _invalid_jumpers(adj: torch.Tensor, block: torch.Tensor, target: torch.Tensor, n_blocks: int, r: int) -> list[int]:
    """Jumpers with no neighbour from which their plan can start."""
    ok = plan_sets(adj, block, target >= 0, n_blocks, r)
    bad = []
    for j in torch.nonzero(target >= 0).flatten().tolist():
        if not (adj[j] & ok[target[j], r - 1]).any():
            bad.append(j)
    return bad


def make_graph(n_vertices: int = 100, n_blocks: int = 4, p_in: float = 0.25, p_out: float = 0.02,
               n_jumpers: int = 20, r: int = 4, seed: int = 0) -> Graph:
    """A stochastic block graph with ``n_jumpers`` jumpers whose rule (target block r steps later)
    can always be met. Deterministic in its arguments."""
    if n_blocks < 2 or n_vertices < 2 * n_blocks:
        raise ValueError(f"need n_blocks >= 2 and at least 2 vertices per block, "
                         f"got {n_vertices} vertices, {n_blocks} blocks")
    if not (0 < p_in <= 1 and 0 < p_out <= 1):
        raise ValueError(f"p_in and p_out must be in (0, 1], got {p_in}, {p_out}")
    if r < 1:
        raise ValueError(f"r must be >= 1, got {r}")
    if not 0 <= n_jumpers <= n_vertices // 2:
        raise ValueError(f"n_jumpers must be in [0, n_vertices // 2 = {n_vertices // 2}], got {n_jumpers}")
    rng = np.random.default_rng(seed)
    block = np.arange(n_vertices) * n_blocks // n_vertices  # equal, contiguous blocks
    same = block[:, None] == block[None, :]
    upper = np.triu(rng.random((n_vertices, n_vertices)) < np.where(same, p_in, p_out), k=1)
    adj = upper | upper.T
    # Every vertex needs a way on: link an isolated vertex to a random vertex of its own block.
    for v in np.flatnonzero(~adj.any(axis=1)):
        mates = np.flatnonzero((block == block[v]) & (np.arange(n_vertices) != v))
        u = rng.choice(mates)
        adj[v, u] = adj[u, v] = True

    adj_t, block_t = torch.from_numpy(adj), torch.from_numpy(block).long()
    target = torch.full((n_vertices,), -1, dtype=torch.long)
    candidates = iter(rng.permutation(n_vertices).tolist())

    def assign(v: int) -> None:
        others = [b for b in range(n_blocks) if b != block[v]]
        target[v] = int(rng.choice(others))

    for _ in range(n_jumpers):
        assign(next(candidates))
    # Replace jumpers whose plan cannot start until all are valid (each replacement can change
    # the others' non-jumper paths, hence the loop).
    while bad := _invalid_jumpers(adj_t, block_t, target, n_blocks, r):
        for j in bad:
            target[j] = -1
            v = next(candidates, None)
            if v is None:
                raise ValueError(
                    f"cannot place {n_jumpers} jumpers whose target block is reachable in r={r} steps: "
                    f"raise p_out (now {p_out}) or p_in (now {p_in}), or lower n_jumpers"
                )
            assign(v)
    return Graph(adj=adj_t, block=block_t, target=target, n_blocks=n_blocks, r=r)


# -- the corpus -------------------------------------------------------------------------------

def generate_walks(graph: Graph, n_walks: int, length: int, seed: int) -> torch.Tensor:
    """``n_walks`` walks of ``length`` vertices, LongTensor ``[n_walks, length]``, obeying every
    edge and every jumper rule. Start vertices are uniform; all walks advance together, one step
    at a time. Deterministic in its arguments."""
    if n_walks < 1 or length < 1:
        raise ValueError(f"n_walks and length must be >= 1, got {n_walks}, {length}")
    g = torch.Generator().manual_seed(int(seed))
    ok = plan_sets(graph.adj, graph.block, graph.target >= 0, graph.n_blocks, graph.r)
    walks = torch.empty(n_walks, length, dtype=torch.long)
    cur = torch.randint(graph.n_vertices, (n_walks,), generator=g)
    walks[:, 0] = cur
    plan = graph.target[cur]                              # target block of the active plan, or -1
    left = torch.where(plan >= 0, graph.r, 0)             # steps until that plan's deadline
    for t in range(1, length):
        allowed = graph.adj[cur]
        active = left > 0
        if active.any():
            allowed[active] &= ok[plan[active], left[active] - 1]
        if not allowed.any(dim=1).all():  # make_graph guarantees a way on; never expected
            raise RuntimeError("walk generation got stuck: a planned walk has no valid next vertex")
        # a uniform choice among the allowed neighbours: the allowed vertex with the largest key
        keys = torch.rand(n_walks, graph.n_vertices, generator=g).masked_fill_(~allowed, -1.0)
        cur = keys.argmax(dim=1)
        walks[:, t] = cur
        left = (left - 1).clamp_(min=0)
        plan = torch.where(left > 0, plan, -1)
        jumped = graph.target[cur] >= 0
        plan = torch.where(jumped, graph.target[cur], plan)
        left = torch.where(jumped, graph.r, left)
    return walks


def compliance(walks: torch.Tensor, graph: Graph, r: int | None = None) -> tuple[float, float]:
    """(edge, rule) compliance of walks ``[B, L]``.

    edge: fraction of consecutive pairs that are edges. rule: fraction of jumper visits at t
    (with t + r inside the walk) whose vertex at t + r is in the jumper's target block; 0.0
    when no such visit exists (no evidence that the rule was learned).
    """
    r = graph.r if r is None else r
    walks = walks.long().cpu()
    if walks.dim() != 2 or walks.size(1) < 2:
        raise ValueError(f"walks must be [B, L] with L >= 2, got shape {tuple(walks.shape)}")
    edge = graph.adj[walks[:, :-1], walks[:, 1:]].float().mean().item()
    if r >= walks.size(1):
        return edge, 0.0
    src, dst = walks[:, :-r], walks[:, r:]
    target = graph.target[src]
    visits = target >= 0
    n = int(visits.sum())
    if n == 0:
        return edge, 0.0
    hits = int(((graph.block[dst] == target) & visits).sum())
    return edge, hits / n


def make_evaluator(graph: Graph, starts: torch.Tensor, length: int, *, n_walks: int = 1000,
                   batch_size: int = 256) -> Callable[[torch.nn.Module], dict[str, float]]:
    """An evaluator: greedy generation of ``n_walks`` walks of ``length`` vertices, started from
    ``starts`` (cycled), scored by :func:`compliance`.

    Greedy decoding is deterministic, so walks from the same start vertex are identical: each
    distinct start is generated once (in batches) and the results are expanded back to
    ``n_walks``. The scores are those of all ``n_walks`` walks, at a fraction of the cost.
    """
    starts = starts.long().flatten()
    if starts.numel() == 0:
        raise ValueError("need at least one start vertex")
    starts = starts[torch.arange(n_walks) % starts.numel()]
    unique, inverse = torch.unique(starts, return_inverse=True)

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        parts = []
        for chunk in unique.split(batch_size):
            out = generate(model, chunk[:, None].to(device), length - 1, greedy=True)
            parts.append(out.cpu())
        walks = torch.cat(parts)[inverse]
        edge, rule = compliance(walks, graph, graph.r)
        return {"eval/edge_compliance": edge, "eval/rule_compliance": rule}

    return evaluate


def walk_windows(walks: torch.Tensor, context: int, stride: int | None = None) -> Dataset:
    """Windows of ``context + 1`` vertices from each walk separately (never across two walks)."""
    return ConcatDataset([TokenWindowDataset(w, context, stride=stride) for w in walks])


# -- the recipe -------------------------------------------------------------------------------

def build(cfg: Any) -> RecipeParts:
    a = recipe_settings(cfg, RECIPE_ARGS, "graph_walks")
    with settings_checked("graph_walks"):
        return _build(a, int(getattr(cfg, "seed", 0)))


def _build(a: dict[str, Any], seed: int) -> RecipeParts:
    length = int(a["walk_length"])
    eval_length = int(a["eval_length"] or length)
    context = int(a["context"])
    if context + 1 > length:
        raise ValueError(f"walk_length ({length}) must be at least context + 1 = {context + 1}")
    if context <= a["r"]:
        raise ValueError(f"context ({context}) must exceed r ({a['r']}) or the rule cannot be seen")

    graph = make_graph(a["n_vertices"], a["n_blocks"], a["p_in"], a["p_out"], a["n_jumpers"], a["r"],
                       seed=epoch_seed(seed, 0, salt=101))
    train_walks = generate_walks(graph, a["n_walks"], length, seed=epoch_seed(seed, 0, salt=102))
    heldout = generate_walks(graph, a["n_heldout"], length, seed=epoch_seed(seed, 0, salt=103))

    with torch.random.fork_rng(devices=[]):  # init is a function of the seed; global RNG untouched
        torch.manual_seed(seed)
        model = GPT(graph.n_vertices, context, n_layer=a["n_layer"], n_head=a["n_head"], n_embd=a["n_embd"],
                    dropout=a["dropout"])
    train = walk_windows(train_walks, context, a["stride"])
    evaluator = make_evaluator(graph, heldout[:, 0], eval_length, n_walks=int(a["n_eval_walks"]))
    return RecipeParts(
        model=model,
        train_data=train,
        val_data=walk_windows(heldout, context, a["stride"]),
        task="language_model",
        evaluators=[evaluator],
        info={"vertices": graph.n_vertices, "blocks": graph.n_blocks, "jumpers": int(graph.jumpers.numel()),
              "edges": int(graph.adj.sum()) // 2, "r": graph.r, "train_walks": a["n_walks"],
              "train_windows": len(train), "params": model.num_params()},
    )
