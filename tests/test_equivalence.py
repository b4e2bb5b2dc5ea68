"""fit() leaves weights bit-identical to a hand-written PyTorch loop doing the same thing."""

import copy

import pytest
import torch
import torch.nn.functional as F

from helpers import quiet_cfg, tiny_data, tiny_mlp
from trainforge import TrainConfig, Trainer
from trainforge.data.loader import epoch_seed
from trainforge.optim.schedules import warmup_cosine


def hand_loop(model, x, y, *, epochs, batch_size, lr, seed, accumulate=1, clip=None, schedule=None, wd=0.01):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule) if schedule else None
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))
        batches = [order[i:i + batch_size] for i in range(0, len(x), batch_size)]
        for k in range(0, len(batches), accumulate):
            for idx in batches[k:k + accumulate]:
                loss = F.cross_entropy(model(x[idx]), y[idx])
                (loss / accumulate).backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if sched:
                sched.step()
    return model


CASES = {
    "plain": dict(),
    "accumulate4": dict(accumulate=4),
    "clip": dict(clip=0.05),
    "warmup_cosine": dict(schedule=True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fit_is_bit_identical_to_hand_loop(tmp_path, case):
    opts = CASES[case]
    x, y = tiny_data(n=128)
    epochs, bs, lr, seed = 3, 8, 1e-2, 7
    steps = epochs * (128 // bs) // opts.get("accumulate", 1)
    model = tiny_mlp()
    reference = copy.deepcopy(model)

    schedule_cfg = {"name": "warmup_cosine", "warmup": 0.1, "min_lr_ratio": 0.1} if opts.get("schedule") else {"name": "constant"}
    cfg = TrainConfig.from_dict(quiet_cfg(
        tmp_path, seed=seed, max_epochs=epochs, batch_size=bs, optimizer={"lr": lr, "weight_decay": 0.01},
        schedule=schedule_cfg, grad={"accumulate": opts.get("accumulate", 1), "clip_norm": opts.get("clip")},
        checkpoint={"enabled": False}))
    result = Trainer(model, cfg).fit((x, y))
    assert result.summary["steps"] == steps

    fn = warmup_cosine(steps, int(0.1 * steps), 0.1) if opts.get("schedule") else None
    hand_loop(reference, x, y, epochs=epochs, batch_size=bs, lr=lr, seed=seed,
              accumulate=opts.get("accumulate", 1), clip=opts.get("clip"), schedule=fn)
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), f"{case}: {name} differs from the hand-written loop"


def test_equivalence_test_can_fail(tmp_path):
    """A different lr must break bit-identity: the comparison above is not vacuous."""
    x, y = tiny_data(n=64)
    model, reference = tiny_mlp(), tiny_mlp()
    cfg = TrainConfig.from_dict(quiet_cfg(tmp_path, max_epochs=1, batch_size=8, optimizer={"lr": 1e-2},
                                          schedule={"name": "constant"}, checkpoint={"enabled": False}))
    Trainer(model, cfg).fit((x, y))
    hand_loop(reference, x, y, epochs=1, batch_size=8, lr=1.1e-2, seed=0)
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), reference.parameters()))


def test_manual_step_matches_one_hand_step(tmp_path):
    x, y = tiny_data(n=8)
    model, reference = tiny_mlp(), tiny_mlp()
    cfg = TrainConfig.from_dict(quiet_cfg(tmp_path, optimizer={"lr": 1e-2, "weight_decay": 0.0}, schedule={"name": "constant"},
                                          checkpoint={"enabled": False}))
    out = Trainer(model, cfg).step((x, y))
    opt = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.0, fused=True)
    loss = F.cross_entropy(reference(x), y)
    loss.backward()
    opt.step()
    assert out["loss"] == pytest.approx(loss.item())
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), reference.parameters()))
