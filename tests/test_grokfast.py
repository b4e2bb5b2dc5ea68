"""Grokfast filters: equal to the formulas written out per parameter (exactly, on CPU), MA passes
gradients through until its queue is full, the lamb schedule, non-finite gradients leave the state
alone, the callback in a run (logged lamb, checkpointed state, bit-identical resume), config checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from helpers import PreemptAt, quiet_cfg, tiny_data, tiny_mlp
from trainforge import Callback, Preempted, TrainConfig, Trainer
from trainforge.config import ConfigError
from trainforge.optim import EMAFilter, Grokfast, MAFilter, lamb_schedule


def reference(kind: str, steps: list[list[torch.Tensor]], *, alpha=0.98, window=100, lamb=2.0):
    """The issue's formulas, per parameter, step by step; returns the filtered gradients of each step.
    EMA: mu starts at the first gradient. MA: the mean is the float64 sum of the queue / window."""
    out, state = [], [None] * len(steps[0])
    for grads in steps:
        filtered = []
        for i, g in enumerate(grads):
            if kind == "ema":
                state[i] = g.clone() if state[i] is None else alpha * state[i] + (1 - alpha) * g
                filtered.append(g + lamb * state[i])
            else:
                state[i] = ((state[i] or []) + [g.clone()])[-window:]
                if len(state[i]) == window:
                    mean = (torch.stack(state[i]).double().sum(0) / window).to(g.dtype)
                    filtered.append(g + lamb * mean)
                else:
                    filtered.append(g.clone())
        out.append(filtered)
    return out


def params_with_grads(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.zeros(s)) for s in shapes]
    steps = [[torch.randn(s, generator=g) * (10 ** torch.randint(-3, 2, (), generator=g).item()) for s in shapes]
             for _ in range(20)]
    return params, steps


SHAPES = [(7, 5), (5,), (3, 4, 2), (1,)]


@pytest.mark.parametrize("kind,kwargs", [("ema", {"alpha": 0.98}), ("ema", {"alpha": 0.7}),
                                         ("ma", {"window": 5}), ("ma", {"window": 1})])
def test_filter_equals_the_formulas_exactly(kind, kwargs):
    params, steps = params_with_grads(SHAPES, seed=1)
    lamb = 2.0 if kind == "ema" else 5.0
    expected = reference(kind, steps, lamb=lamb, **kwargs)
    f = EMAFilter(kwargs["alpha"]) if kind == "ema" else MAFilter(kwargs["window"])
    for step, grads in enumerate(steps):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        f(params, lamb)
        for i, p in enumerate(params):
            assert torch.equal(p.grad, expected[step][i]), (step, i)


def test_ma_passes_gradients_unchanged_until_the_queue_is_full():
    params, steps = params_with_grads(SHAPES, seed=2)
    f = MAFilter(window=4)
    for step, grads in enumerate(steps[:6]):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        f(params, 5.0)
        changed = any(not torch.equal(p.grad, g) for p, g in zip(params, grads))
        assert changed == (step >= 3), step


def test_ema_starts_at_the_first_gradient():
    p = nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([1.0, -2.0, 4.0])
    EMAFilter(0.9)([p], 2.0)
    assert torch.equal(p.grad, torch.tensor([3.0, -6.0, 12.0]))  # g + 2 * g


@pytest.mark.parametrize("kind", ["ema", "ma"])
def test_a_non_finite_gradient_leaves_the_state_as_it_was(kind):
    params, steps = params_with_grads(SHAPES, seed=3)
    bad = [g.clone() for g in steps[4]]
    bad[1][2] = float("nan")
    bad[2][0, 0, 0] = float("inf")

    def apply(filt, grads):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        filt(params, 2.0)
        return [p.grad.clone() for p in params]

    hit, clean = (EMAFilter(0.9), EMAFilter(0.9)) if kind == "ema" else (MAFilter(3), MAFilter(3))
    for step, grads in enumerate(steps[:10]):
        if step == 4:  # the engine drops this step; the filter must forget it too
            out = apply(hit, bad)
            assert not all(torch.isfinite(t).all() for t in out)
        got, want = apply(hit, grads), apply(clean, grads)
        assert all(torch.equal(a, b) for a, b in zip(got, want)), step
        assert all(torch.isfinite(t).all() for t in got)


def test_a_non_finite_first_gradient_does_not_start_the_ema():
    p = nn.Parameter(torch.zeros(2))
    f = EMAFilter(0.5)
    p.grad = torch.tensor([float("nan"), 1.0])
    f([p], 1.0)
    p.grad = torch.tensor([2.0, 4.0])
    f([p], 1.0)
    assert torch.equal(p.grad, torch.tensor([4.0, 8.0]))  # mu = the first finite gradient


def test_parameter_without_gradient_is_left_alone():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(3))
    f = EMAFilter(0.5)
    a.grad, b.grad = torch.ones(2), None
    f([a, b], 1.0)
    assert b.grad is None and torch.equal(a.grad, torch.full((2,), 2.0))


def test_lamb_schedule_forms():
    assert lamb_schedule(2.0)(12345) == 2.0
    warm = lamb_schedule({"warmup": 100, "value": 2.0})
    assert [warm(s) for s in (0, 50, 100, 1000)] == [0.0, 1.0, 2.0, 2.0]
    points = lamb_schedule([[10, 0.0], [20, 4.0], [30, 4.0], [31, 0.0]])
    assert [points(s) for s in (0, 10, 15, 20, 25, 30, 31, 10_000)] == [0.0, 0.0, 2.0, 4.0, 4.0, 4.0, 0.0, 0.0]
    for bad in ([[5, 1.0], [5, 2.0]], [], [[0, -1.0]], {"warmup": 0, "value": 1.0}, float("nan"), True):
        with pytest.raises(ValueError):
            lamb_schedule(bad)


# ------------------------------------------------------------------------------- in a run (and killed)
class LambSpy(Callback):
    def __init__(self):
        self.seen = []

    def on_before_optimizer_step(self, trainer):
        gf = next(cb for cb in trainer.callbacks if isinstance(cb, Grokfast))
        self.seen.append((trainer.state.counters.step, gf.last_lamb))


def run_cfg(tmp_path, name, **fields):
    base = {"max_epochs": 3, "batch_size": 16, "optimizer": {"name": "adam", "lr": 3e-3, "weight_decay": 0.01,
                                                             "decay_all": True},
            "checkpoint": {"every_steps": 4}, "log": {"every_steps": 2}}
    cfg = quiet_cfg(tmp_path, **{**base, **fields})
    cfg["run_dir"] = str(tmp_path / name)
    return TrainConfig.from_dict(cfg)


def test_config_adds_the_callback_and_logs_the_scheduled_lamb(tmp_path):
    x, y = tiny_data(64)
    spy = LambSpy()
    cfg = run_cfg(tmp_path, "run", max_epochs=2, grokfast={"filter": "ema", "lamb": {"warmup": 4, "value": 2.0}})
    result = Trainer(tiny_mlp(), cfg, callbacks=[spy]).fit((x, y))
    assert spy.seen == [(s, 2.0 * min(1.0, s / 4)) for s in range(8)]
    curve = result.curves["grokfast/lamb"]
    assert curve["step"] == [2, 4, 6, 8] and curve["value"] == [0.5, 1.5, 2.0, 2.0]


def test_the_filter_changes_training_and_decay_all_decays_every_parameter(tmp_path):
    x, y = tiny_data(64)
    plain = tiny_mlp()
    Trainer(plain, run_cfg(tmp_path, "plain", max_epochs=1)).fit((x, y))
    filtered = tiny_mlp()
    Trainer(filtered, run_cfg(tmp_path, "ema", max_epochs=1, grokfast={"filter": "ema"})).fit((x, y))
    assert not torch.equal(plain[0].weight, filtered[0].weight)
    from trainforge.optim import build_optimizer
    cfg = run_cfg(tmp_path, "x")
    opt = build_optimizer(tiny_mlp(), cfg.optimizer)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.01
    assert len(opt.param_groups[0]["params"]) == len(list(tiny_mlp().parameters()))


@pytest.mark.parametrize("grokfast", [{"filter": "ema", "alpha": 0.9, "lamb": 2.0},
                                      {"filter": "ma", "window": 3, "lamb": [[0, 5.0], [8, 1.0]]}],
                         ids=["ema", "ma"])
def test_preempted_and_resumed_run_with_the_filter_is_bit_identical(tmp_path, grokfast):
    x, y = tiny_data(96)
    straight = tiny_mlp()
    ref = Trainer(straight, run_cfg(tmp_path, "straight", grokfast=grokfast)).fit((x, y))
    cfg = run_cfg(tmp_path, "interrupted", grokfast=grokfast)
    for stop in (5, 11):  # 6 steps per epoch: mid epoch 1, then mid epoch 2 (after a checkpoint at 4 / 8)
        with pytest.raises(Preempted):
            Trainer(tiny_mlp(), cfg, callbacks=[PreemptAt(stop)]).fit((x, y), resume_from="latest")
    resumed = tiny_mlp()
    got = Trainer(resumed, cfg).fit((x, y), resume_from="latest")
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert got.history["train/loss"] == ref.history["train/loss"]
    from trainforge.checkpoint import load_checkpoint
    state = load_checkpoint(got.final_checkpoint)["tensors"]["callback/grokfast"]  # the registry key of the callback
    assert state["filter"] == grokfast["filter"]
    assert all(isinstance(t, torch.Tensor) for t in state["groups"][0].values())


def test_state_of_another_filter_or_model_is_refused():
    p = nn.Parameter(torch.zeros(3))
    p.grad = torch.ones(3)
    ema = EMAFilter()
    ema([p], 1.0)
    with pytest.raises(ValueError, match="filter 'ema'"):
        MAFilter(3).load_state_dict(ema.state_dict())
    other = EMAFilter()
    q = nn.Parameter(torch.zeros(4))
    q.grad = torch.ones(4)
    other.load_state_dict(ema.state_dict())
    with pytest.raises(ValueError, match="shapes differ"):
        other([q], 1.0)


def test_a_sharded_state_of_another_world_size_is_refused_naming_both():
    """A state saved under FSDP (one part per rank) loads only at the world size that saved it: here
    two ranks' parts into one process. A non-zero rank's copy (which holds nothing) is refused too."""
    p = nn.Parameter(torch.zeros(3))
    p.grad = torch.ones(3)
    ema = EMAFilter()
    ema([p], 1.0)
    part = ema.state_dict()
    one = EMAFilter()
    one.load_state_dict({"filter": "ema", "world_size": 1, "ranks": [part]})  # 1 rank's part: loads
    one([p], 1.0)
    for state, match in [({"filter": "ema", "world_size": 2, "ranks": [part, part]},
                          r"sharded over 2 FSDP ranks.*over 1 FSDP.*world size 2 -> 1"),
                         ({"filter": "ema", "world_size": 2, "ranks": None}, "non-zero rank's copy")]:
        other = EMAFilter()
        other.load_state_dict(state)
        with pytest.raises(ValueError, match=match):
            other([p], 1.0)


@pytest.mark.parametrize("old,new,refused", [
    (("fsdp", 2), ("none", 1), True), (("fsdp", 2), ("fsdp", 4), True), (("none", 1), ("fsdp", 2), True),
    (("fsdp", 2), ("fsdp", 2), False), (("ddp", 2), ("none", 1), False), (("fsdp", 2), ("ddp", 2), True)])
def test_resume_refuses_another_sharding_of_the_filter_state(old, new, refused):
    """Checked with the checkpoint's meta before anything is loaded: under FSDP the filter's state is
    per rank (its shards'), so it resumes only where the run shards it the same way."""
    from trainforge.snapshot import compare

    def run(strategy, world, batch):
        return {"config": {"batch_size": batch, "grokfast": {"filter": "ema"}, "distributed": {"strategy": strategy}},
                "optimizer": "AdamW", "world_size": world}
    meta = {**run(old[0], old[1], 16 // old[1]), "model_signature": {}}
    blocking, _ = compare(run(new[0], new[1], 16 // new[1]), {}, meta)
    assert any(b.startswith("grokfast: ") for b in blocking) == refused, blocking
    if refused:
        assert f"resume at world size {old[1]} with distributed.strategy {old[0]}" in blocking[0]


@pytest.mark.parametrize("section,match", [
    ({"filter": "ema", "alpha": 1.0}, "grokfast.alpha"),
    ({"filter": "ema", "alpha": float("nan")}, "grokfast.alpha"),
    ({"filter": "ma", "window": 0}, "grokfast.window"),
    ({"filter": "ma", "window": 100_000}, "grokfast.window"),
    ({"filter": "ema", "lamb": -1.0}, "grokfast.lamb"),
    ({"filter": "ema", "lamb": float("inf")}, "grokfast.lamb"),
    ({"filter": "ema", "lamb": [[10, 1.0], [5, 2.0]]}, "grokfast.lamb"),
    ({"filter": "ema", "lamb": {"warmup": 0, "value": 1.0}}, "grokfast.lamb"),
    ({"filter": "fir"}, "grokfast.filter"),
    ({"filter": "ema", "beta": 0.5}, "grokfast.beta"),
])
def test_bad_grokfast_config_names_the_field(section, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict({"grokfast": section})


def test_grokfast_config_forms_and_overrides():
    cfg = TrainConfig.from_dict({}, overrides=["grokfast.filter=ma", "grokfast.window=50", "grokfast.lamb=5"])
    assert cfg.grokfast.filter == "ma" and cfg.grokfast.window == 50 and cfg.grokfast.lamb == 5.0
    assert TrainConfig.from_dict({"grokfast": None}).grokfast is None
    assert TrainConfig.from_dict({}).grokfast is None
    warm = TrainConfig.from_dict({"grokfast": {"lamb": {"warmup": 100, "value": 2.0}}})
    assert warm.grokfast.lamb.warmup == 100
    assert math.isclose(TrainConfig.from_dict({"optimizer": {"decay_all": True}}).optimizer.weight_decay, 0.01)


KILL_CONFIG = """
seed: 5
max_epochs: 3   # final_weights (test_preemption) expects 3
batch_size: 16
model: tiny_project:build_model
model_args: {{sleep: 0.08}}
data: tiny_project:build_data
optimizer: {{name: adam, lr: 0.003, weight_decay: 0.01, decay_all: true}}
grad: {{accumulate: 2}}
grokfast: {grokfast}
checkpoint: {{every_steps: 2, keep_last: 2}}
log: {{progress: false, sinks: [jsonl], every_steps: 3}}
"""


@pytest.mark.slow
@pytest.mark.parametrize("grokfast", ["{filter: ema, alpha: 0.9, lamb: 2.0}",
                                      "{filter: ma, window: 4, lamb: [[0, 1.0], [6, 5.0]]}"], ids=["ema", "ma"])
def test_sigkill_at_random_moments_then_resume_is_byte_identical(tmp_path, grokfast):
    import random

    from test_preemption import final_weights, reference, train_with_kills
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(KILL_CONFIG.format(grokfast=grokfast))
    expected = reference(tmp_path, cfg)
    run_dir = tmp_path / "killed"
    kills = train_with_kills(cfg, run_dir, random.Random(14), max_kills=2, wait=(2.0, 3.5), max_attempts=12)
    assert kills == 2
    assert final_weights(run_dir) == expected


def test_filter_acts_once_per_optimizer_step_with_accumulation(tmp_path):
    x, y = tiny_data(96)  # batch 16, accumulate 3: 2 optimizer steps per epoch
    calls = []

    class Counting(EMAFilter):
        def __call__(self, params, lamb):
            calls.append(lamb)
            super().__call__(params, lamb)

    gf = Grokfast("ema")
    gf.filter = Counting(0.98)
    cfg = run_cfg(tmp_path, "acc", max_epochs=2, grad={"accumulate": 3}, checkpoint={"enabled": False})
    result = Trainer(tiny_mlp(), cfg, callbacks=[gf]).fit((x, y))
    assert result.summary["steps"] == 4 and len(calls) == 4


def test_half_precision_gradients_whose_sum_exceeds_the_dtype_still_count_as_finite():
    p = nn.Parameter(torch.zeros(4, dtype=torch.float16))
    f = EMAFilter(0.5)
    p.grad = torch.full((4,), 60000.0, dtype=torch.float16)  # sum 240,000 > float16's 65,504
    f([p], 0.0)
    assert f.buffers[0]["started"].item() == 1.0 and torch.equal(f.buffers[0]["mu"], p.grad)
