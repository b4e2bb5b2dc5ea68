"""The loss library against hand computations and PyTorch's own, shape errors, config selection,
distillation's teacher, learned multi-task weights (trained, checkpointed, resumed exactly), logged parts."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import PreemptAt, quiet_cfg
from tiny_project import build_data, build_model
from trainforge import ConfigError, Preempted, TrainConfig, Trainer
from trainforge.losses import (L1, MSE, CrossEntropy, Distillation, Focal, Huber, InfoNCE, MultiTask, build_loss,
                               focal_loss, info_nce, kd_kl)

LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
TARGET = torch.tensor([0, 2])


def softmax(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def test_label_smoothing_matches_pytorch():
    loss, parts = CrossEntropy(label_smoothing=0.1)(LOGITS, TARGET)
    assert torch.equal(loss, F.cross_entropy(LOGITS, TARGET, label_smoothing=0.1))
    assert torch.equal(parts["ce"], loss.detach())
    lm_logits = torch.randn(2, 5, 7)
    lm_target = torch.randint(0, 7, (2, 5))
    loss, _ = CrossEntropy(label_smoothing=0.2)(lm_logits, lm_target)
    assert torch.equal(loss, F.cross_entropy(lm_logits.reshape(-1, 7), lm_target.reshape(-1), label_smoothing=0.2))
    built = build_loss(TrainConfig.from_dict({"loss": {"name": "label_smoothing"}}).loss)
    assert built.label_smoothing == 0.1


def test_focal_by_hand_and_at_gamma_zero():
    by_hand = 0.0
    for row, t in zip(LOGITS.tolist(), TARGET.tolist()):
        p = softmax(row)[t]
        by_hand += -((1 - p) ** 2) * math.log(p)
    by_hand /= 2
    loss, parts = Focal(gamma=2.0)(LOGITS, TARGET)
    assert float(loss) == pytest.approx(by_hand, rel=1e-6)
    assert "focal" in parts
    assert torch.allclose(focal_loss(LOGITS, TARGET, gamma=0.0), F.cross_entropy(LOGITS, TARGET), atol=1e-7)
    w = [1.0, 2.0, 3.0]
    weighted, _ = Focal(gamma=0.0, class_weights=w)(LOGITS, TARGET)
    assert torch.allclose(weighted, F.cross_entropy(LOGITS, TARGET, weight=torch.tensor(w)), atol=1e-7)


def test_regression_losses_match_pytorch_and_huber_by_hand():
    pred, target = torch.tensor([0.0, 1.0, 4.0]), torch.tensor([0.5, 1.0, 1.0])
    assert torch.equal(MSE()(pred, target)[0], F.mse_loss(pred, target))
    assert torch.equal(L1()(pred, target)[0], F.l1_loss(pred, target))
    # huber, delta 1: 0.5 * 0.25 (|d| = 0.5), 0, 1 * (3 - 0.5) (|d| = 3)
    assert float(Huber(1.0)(pred, target)[0]) == pytest.approx((0.125 + 0 + 2.5) / 3)


def test_infonce_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    t = 0.5
    # cosine similarities: a0.b0 = 1, a0.b1 = 1/sqrt2, a1.b0 = 0, a1.b1 = 1/sqrt2
    s = [[1.0, 1 / math.sqrt(2)], [0.0, 1 / math.sqrt(2)]]
    rows = -sum(math.log(softmax([v / t for v in s[i]])[i]) for i in range(2)) / 2
    cols = -sum(math.log(softmax([s[j][i] / t for j in range(2)])[i]) for i in range(2)) / 2
    loss, parts = InfoNCE(temperature=t)(a, b)
    assert float(loss) == pytest.approx(0.5 * (rows + cols), rel=1e-6)
    assert torch.equal(info_nce(a, b, t), loss)


def test_distillation_kl_matches_f_kl_div_and_mixes_by_alpha():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5))  # eval mode: dropout off, outputs deterministic
    x = torch.randn(5, 4)
    student = torch.randn(5, 3, requires_grad=True)
    y = torch.randint(0, 3, (5,))
    loss_fn = Distillation(teacher, alpha=0.7, temperature=3.0)
    loss, parts = loss_fn(student, y, inputs=x)
    with torch.no_grad():
        t_logits = teacher.eval()(x)
    kl = F.kl_div(F.log_softmax(student / 3.0, -1), F.softmax(t_logits / 3.0, -1), reduction="batchmean") * 9.0
    assert torch.allclose(parts["kd"], kl.detach(), atol=1e-6)
    assert torch.allclose(kd_kl(student, t_logits, 3.0), kl, atol=1e-6)
    assert torch.allclose(loss, 0.7 * kl + 0.3 * F.cross_entropy(student, y), atol=1e-6)
    loss.backward()
    assert student.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not teacher.training
    assert list(loss_fn.parameters()) == [] and loss_fn.state_dict() == {}  # teacher not in the tree


WRONG_SHAPES = [
    (CrossEntropy(), torch.zeros(4, 3), torch.zeros(5, dtype=torch.long), "cross_entropy"),
    (Focal(), torch.zeros(4, 3), torch.zeros(4, 3, dtype=torch.long), "focal"),
    (MSE(), torch.zeros(4, 2), torch.zeros(4, 3), "mse"),
    (Huber(), torch.zeros(4), torch.zeros(5), "huber"),
    (L1(), torch.zeros(4, 1), torch.zeros(1, 4), "l1"),
    (InfoNCE(), torch.zeros(4, 8), torch.zeros(4, 6), "infonce"),
    (Distillation(nn.Linear(2, 3)), torch.zeros(4, 3), torch.zeros(3, dtype=torch.long), "distill"),
]


@pytest.mark.parametrize("loss,output,target,name", WRONG_SHAPES, ids=[w[3] for w in WRONG_SHAPES])
def test_wrong_shape_names_the_loss_and_both_shapes(loss, output, target, name):
    with pytest.raises(ValueError) as e:
        loss(output, target, inputs=torch.zeros(4, 2))
    msg = str(e.value)
    assert f"loss {name}" in msg and str(tuple(output.shape)) in msg and str(tuple(target.shape)) in msg


def test_multitask_fixed_weights_by_hand():
    out = (torch.tensor([[2.0, 0.0]]), torch.tensor([1.0, 2.0]))
    tgt = (torch.tensor([0]), torch.tensor([0.0, 0.0]))
    mt = MultiTask({"ce": CrossEntropy(), "mse": MSE()}, weights={"ce": 2.0, "mse": 0.5},
                   selectors={"ce": (0, 0), "mse": (1, 1)})
    loss, parts = mt(out, tgt)
    ce = -math.log(softmax([2.0, 0.0])[0])
    assert float(loss) == pytest.approx(2.0 * ce + 0.5 * 2.5, rel=1e-6)
    assert float(parts["ce"]) == pytest.approx(ce, rel=1e-6) and float(parts["mse"]) == pytest.approx(2.5)


def test_multitask_uncertainty_by_hand():
    mt = MultiTask({"a": MSE(), "b": L1()}, weighting="uncertainty")
    with torch.no_grad():
        mt.log_vars.copy_(torch.tensor([0.5, -1.0]))
    pred, target = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0])
    loss, parts = mt(pred, target)
    mse, l1 = 5.0, 2.0
    assert float(loss.detach()) == pytest.approx(math.exp(-0.5) * mse + 0.5 + math.exp(1.0) * l1 - 1.0, rel=1e-6)
    assert float(parts["log_var/a"]) == 0.5


# -- in a run --------------------------------------------------------------------------------------

def cfg_for(tmp_path, name, **fields):
    base = {"max_epochs": 2, "batch_size": 16, "optimizer": {"lr": 3e-3}, "checkpoint": {"every_steps": 5},
            "log": {"every_steps": 4}}
    cfg = quiet_cfg(tmp_path, **{**base, **fields})
    cfg["run_dir"] = str(tmp_path / name)
    return TrainConfig.from_dict(cfg)


UNCERTAINTY = {"name": "multitask", "weighting": "uncertainty",
               "losses": {"ce": {"name": "cross_entropy"}, "focal": {"name": "focal", "gamma": 2.0}}}


def test_uncertainty_weights_are_trained_saved_and_resumed_exactly(tmp_path):
    from trainforge.checkpoint import load_checkpoint
    train, val = build_data()
    model = build_model()
    trainer = Trainer(model, cfg_for(tmp_path, "straight", loss=UNCERTAINTY))
    log_vars = model.trainforge_loss.log_vars
    assert any(p is log_vars for g in trainer.optimizer.param_groups for p in g["params"])
    result = trainer.fit(train, val)
    assert not torch.equal(log_vars.detach(), torch.zeros(2))  # trained
    saved = load_checkpoint(result.final_checkpoint)["model"]
    assert torch.equal(saved["trainforge_loss.log_vars"], log_vars.detach())
    cfg = cfg_for(tmp_path, "interrupted", loss=UNCERTAINTY)
    with pytest.raises(Preempted):
        Trainer(build_model(), cfg, callbacks=[PreemptAt(7)]).fit(train, val, resume_from="latest")
    resumed = build_model()
    got = Trainer(resumed, cfg).fit(train, val, resume_from="latest")
    for k, v in model.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert got.history["loss/ce"] == result.history["loss/ce"]
    assert got.history["loss/log_var/focal"] == result.history["loss/log_var/focal"]


def test_distillation_from_a_checkpoint_logs_parts_and_leaves_the_teacher_out(tmp_path):
    train, val = build_data()
    teacher_cfg = cfg_for(tmp_path, "teacher", max_epochs=1, model="tiny_project:build_model",
                          data="tiny_project:build_data")
    Trainer(build_model(), teacher_cfg).fit(train, val)
    loss = {"name": "distill", "teacher": str(tmp_path / "teacher"), "alpha": 0.5, "temperature": 2.0}
    student = build_model()
    trainer = Trainer(student, cfg_for(tmp_path, "student", max_epochs=1, loss=loss))
    teacher = trainer.task.loss.teacher
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    result = trainer.fit(train, val)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert set(student.state_dict()) == set(build_model().state_dict())  # nothing of the teacher saved
    records = [json.loads(x) for x in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r.get("kind") == "train"]
    assert train_records and all("loss/kd" in r and "loss/ce" in r for r in train_records)
    assert "loss/kd" in result.history
    with pytest.raises(ConfigError, match="loss.teacher"):
        Trainer(build_model(), cfg_for(tmp_path, "s2", loss={**loss, "teacher": str(tmp_path / "nowhere")}))


def test_configured_focal_loss_trains_and_a_mismatched_loss_is_refused(tmp_path):
    train, val = build_data()
    result = Trainer(build_model(), cfg_for(tmp_path, "focal", max_epochs=1, loss={"name": "focal", "gamma": 1.0})).fit(train, val)
    assert "loss/focal" in result.history
    with pytest.raises(ConfigError, match="loss.name"):
        Trainer(build_model(), cfg_for(tmp_path, "mse", loss={"name": "mse"}))


def test_contrastive_task_with_infonce(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 8, generator=g)
    views = (base + 0.05 * torch.randn(64, 8, generator=g), base + 0.05 * torch.randn(64, 8, generator=g))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    cfg = cfg_for(tmp_path, "con", max_epochs=3, task="contrastive", loss={"name": "infonce", "temperature": 0.2})
    from trainforge.data.loader import TensorData
    result = Trainer(model, cfg).fit(TensorData(*views))
    losses = result.history["train/loss"]
    assert losses[-1] < losses[0] and "loss/infonce" in result.history


@pytest.mark.parametrize("loss,field", [
    ({"name": "focal", "gamma": -1}, "loss.gamma"),
    ({"name": "focal", "gamma": float("inf")}, "loss.gamma"),
    ({"name": "nope"}, "loss.name"),
    ({"name": "infonce", "temperature": 0}, "loss.temperature"),
    ({"name": "distill", "teacher": "x", "alpha": 1.5}, "loss.alpha"),
    ({"name": "distill"}, "loss"),
    ({"name": "label_smoothing", "label_smoothing": 1.0}, "loss.label_smoothing"),
    ({"name": "huber", "delta": float("nan")}, "loss.delta"),
    ({"name": "focal", "class_weights": [1.0, -2.0]}, "loss.class_weights"),
    ({"name": "multitask"}, "loss"),
    ({"name": "multitask", "losses": {"a": {"name": "mse"}}, "weights": {"b": 1.0}}, "loss"),
    ({"name": "multitask", "losses": {"a": {"name": "mse", "gamma": -3}}}, "loss.losses.a.gamma"),
    ({"name": "mse", "weights": {"a": 1.0}}, "loss"),
])
def test_bad_loss_config_names_the_field(loss, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        TrainConfig.from_dict({"loss": loss})
