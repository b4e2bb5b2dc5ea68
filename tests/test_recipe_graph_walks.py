"""graph_walks: the graph, the rule-obeying corpus, compliance, the evaluator, the recipe, and the gate."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from trainforge.config import ConfigError, TrainConfig
from trainforge.data.loader import make_loader, prepare_epoch
from trainforge.recipes import graph_walks as gw
from trainforge.recipes.base import RecipeParts
from trainforge.recipes.gpt import generate


@pytest.fixture(scope="module")
def graph():
    return gw.make_graph(60, 3, 0.3, 0.04, n_jumpers=8, r=3, seed=5)


def test_make_graph_structure(graph):
    n = graph.n_vertices
    assert n == 60 and graph.n_blocks == 3 and graph.r == 3
    assert torch.equal(graph.adj, graph.adj.T) and not graph.adj.diagonal().any()
    assert graph.adj.any(dim=1).all()  # every vertex has a way on
    assert torch.bincount(graph.block).tolist() == [20, 20, 20]
    j = graph.jumpers
    assert j.numel() == 8
    assert (graph.target[j] != graph.block[j]).all()  # a rule always sends the walk elsewhere
    assert (graph.target[graph.target < 0] == -1).all()
    # blocks are dense inside, sparse between
    same = graph.block[:, None] == graph.block[None, :]
    assert graph.adj[same].float().mean() > 5 * graph.adj[~same].float().mean()


def test_make_graph_is_deterministic_and_seeded(graph):
    again = gw.make_graph(60, 3, 0.3, 0.04, n_jumpers=8, r=3, seed=5)
    assert torch.equal(again.adj, graph.adj) and torch.equal(again.target, graph.target)
    other = gw.make_graph(60, 3, 0.3, 0.04, n_jumpers=8, r=3, seed=6)
    assert not torch.equal(other.adj, graph.adj)


def test_every_jumper_can_meet_its_rule(graph):
    assert gw._invalid_jumpers(graph.adj, graph.block, graph.target, graph.n_blocks, graph.r) == []
    ok = gw.plan_sets(graph.adj, graph.block, graph.target >= 0, graph.n_blocks, graph.r)
    assert ok.shape == (3, 3, 60)
    assert torch.equal(ok[:, 0], graph.block[None, :] == torch.arange(3)[:, None])
    assert not ok[:, 1:, graph.jumpers].any()  # plans pass through non-jumpers only


def test_make_graph_refuses_impossible_rules():
    with pytest.raises(ValueError, match="raise p_out"):
        gw.make_graph(40, 4, 0.5, 1e-9, n_jumpers=4, r=3, seed=0)  # no edges between blocks
    with pytest.raises(ValueError, match="n_jumpers"):
        gw.make_graph(20, 2, 0.5, 0.1, n_jumpers=11)
    with pytest.raises(ValueError, match="r must be"):
        gw.make_graph(20, 2, 0.5, 0.1, n_jumpers=2, r=0)


@pytest.mark.parametrize("r", [1, 2, 5])
def test_walks_obey_every_edge_and_rule(r):
    g = gw.make_graph(60, 3, 0.3, 0.05, n_jumpers=10, r=r, seed=r)
    walks = gw.generate_walks(g, 400, 40, seed=1)
    assert walks.shape == (400, 40) and walks.dtype == torch.int64
    assert gw.compliance(walks, g) == (1.0, 1.0)
    visits = (g.target[walks[:, :-r]] >= 0).sum().item()
    assert visits > 400  # the rule is actually exercised, not vacuously true
    assert len(torch.unique(walks[:, 0])) > 50  # start vertices are spread out


def test_generate_walks_is_deterministic(graph):
    a = gw.generate_walks(graph, 50, 20, seed=3)
    assert torch.equal(a, gw.generate_walks(graph, 50, 20, seed=3))
    assert not torch.equal(a, gw.generate_walks(graph, 50, 20, seed=4))


def tiny_graph():
    """Path 0-1-2-3 (blocks 0,0,1,1) with jumper 0 whose target block is 1, r = 2."""
    adj = torch.zeros(4, 4, dtype=torch.bool)
    for u, v in [(0, 1), (1, 2), (2, 3)]:
        adj[u, v] = adj[v, u] = True
    return gw.Graph(adj=adj, block=torch.tensor([0, 0, 1, 1]), target=torch.tensor([1, -1, -1, -1]), n_blocks=2, r=2)


def test_compliance_by_hand():
    g = tiny_graph()
    walks = torch.tensor([
        [0, 1, 2, 3],  # all edges; jumper at t=0, t+2 = vertex 2 in block 1: kept
        [0, 1, 0, 1],  # all edges; jumper at t=0 -> 0 (block 0): broken; jumper at t=2 -> beyond the walk
        [3, 0, 2, 1],  # edges: 3-0 no, 0-2 no, 2-1 yes; jumper at t=1 -> vertex 1: broken
    ])
    edge, rule = gw.compliance(walks, g)
    assert edge == pytest.approx(7 / 9)
    assert rule == pytest.approx(1 / 3)
    # r = 1: visits at (walk, t) = (0, 0), (1, 0), (1, 2), (2, 1); only the last steps into block 1
    assert gw.compliance(walks, g, r=1) == (pytest.approx(7 / 9), pytest.approx(1 / 4))


def test_compliance_without_jumper_visits_is_zero():
    g = tiny_graph()
    assert gw.compliance(torch.tensor([[1, 2, 3, 2]]), g) == (1.0, 0.0)
    assert gw.compliance(torch.tensor([[0, 1]]), g) == (1.0, 0.0)  # t + r outside the walk
    with pytest.raises(ValueError):
        gw.compliance(torch.tensor([1, 2, 3]), g)


def test_evaluator_matches_generating_every_walk(graph):
    """Generating each distinct start once and expanding gives exactly the scores of all walks."""
    torch.manual_seed(0)
    model = gw.GPT(graph.n_vertices, 8, n_layer=1, n_head=2, n_embd=16).eval()
    starts = gw.generate_walks(graph, 30, 2, seed=0)[:, 0]
    evaluate = gw.make_evaluator(graph, starts, 20, n_walks=100, batch_size=7)
    with torch.no_grad():
        got = evaluate(model)
        every = generate(model, starts[torch.arange(100) % 30][:, None], 19, greedy=True)  # windowed: 20 > 8
    edge, rule = gw.compliance(every, graph)
    assert got == {"eval/edge_compliance": pytest.approx(edge), "eval/rule_compliance": pytest.approx(rule)}


def test_build_and_defaults():
    cfg = TrainConfig.from_dict({**gw.DEFAULTS, "recipe": "graph_walks", "recipe_args": gw.tiny_args()})
    assert cfg.max_epochs == 50 and cfg.batch_size == 64 and cfg.optimizer.lr == 3e-4
    assert cfg.schedule.warmup == 0.1 and cfg.grad.clip_norm == 1.0
    assert cfg.gate == {"eval/edge_compliance": "> 0.95", "eval/rule_compliance": "> 0.80"}
    parts = gw.build(cfg)
    assert isinstance(parts, RecipeParts) and parts.task == "language_model"
    a = gw.tiny_args()
    assert len(parts.train_data) == a["n_walks"]  # walk_length = context + 1: one window per walk
    assert parts.train_data[0].shape == (a["context"] + 1,)
    assert len(parts.val_data) == a["n_heldout"]
    assert parts.info["vertices"] == a["n_vertices"] and parts.info["params"] == parts.model.num_params()
    assert set(gw.tiny_args()) == set(gw.RECIPE_ARGS)
    again = gw.build(cfg)  # a pure function of the config
    assert torch.equal(parts.train_data[5], again.train_data[5])
    assert all(torch.equal(p, q) for p, q in zip(parts.model.parameters(), again.model.parameters()))


def test_windows_never_cross_walks():
    walks = torch.arange(2 * 9).reshape(2, 9)
    ds = gw.walk_windows(walks, 4)
    assert [w.tolist() for w in ds] == [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8], [9, 10, 11, 12, 13], [13, 14, 15, 16, 17]]


def test_settings_checked_at_the_door():
    with pytest.raises(ConfigError, match=r"recipe_args.n_layers.*known keys"):
        gw.build(SimpleNamespace(seed=0, recipe_args={"n_layers": 3}))
    with pytest.raises(ConfigError, match="walk_length"):
        gw.build(SimpleNamespace(seed=0, recipe_args={**gw.tiny_args(), "walk_length": 10}))


def test_tiny_config_passes_the_gate():
    """The tiny settings with the recipe's optimisation (AdamW 3e-4, batch 64, 10% warmup cosine,
    clip 1.0) pass edge > 0.95 and rule > 0.80 well inside 50 epochs (a hand-written loop)."""
    seed, max_epochs = 0, 50
    parts = gw.build(SimpleNamespace(seed=seed, recipe_args=gw.tiny_args()))
    model, (evaluate,) = parts.model, parts.evaluators
    loader = make_loader(parts.train_data, batch_size=64, seed=seed)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}], lr=3e-4, fused=True)
    total = max_epochs * len(loader)
    warm = int(0.1 * total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              0.1 + 0.45 * (1 + math.cos(math.pi * (s - warm) / (total - warm))))
    for epoch in range(20):
        model.train()
        prepare_epoch(loader, seed, epoch)
        for batch in loader:
            loss = F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            m = evaluate(model)
        if m["eval/edge_compliance"] > 0.95 and m["eval/rule_compliance"] > 0.80:
            break
    else:
        pytest.fail(f"tiny config did not pass the gate in 20 epochs: {m}")
