"""BitNet: BitLinear against the formulas by hand, STE gradients, conversion, phase-in, regularizer
and sparsity, packed export -> load identity, CLI export, config checks, and exact resume with BitNet on."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import PreemptAt, quiet_cfg
from tiny_project import build_data, build_model
from trainforge import ConfigError, Preempted, TrainConfig, Trainer
from trainforge.quant import (BitLinear, convert_to_bitnet, export_bitnet, load_bitnet, pack_binary, pack_ternary,
                              quantization_regularizer, set_phase_in, ternary_sparsity, unpack_binary, unpack_ternary)
from trainforge.recipes.gpt import GPT

W = [[0.5, -0.2], [0.05, 1.0]]
X = [[1.0, -0.3], [0.25, 0.5]]


def layer(bits, w=W, **kw):
    lin = BitLinear(2, 2, bias=True, weight_bits=bits, **kw)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(w))
        lin.bias.copy_(torch.tensor([0.1, -0.1]))
    return lin


def hand_act(row):
    """Per-token absmax to 8 bits, by hand: s = 127 / max|x|, round, clamp to [-128, 127], / s."""
    s = 127 / max(abs(v) for v in row)
    return [max(-128, min(127, round(v * s))) / s for v in row]


@pytest.mark.parametrize("bits", [1.58, 1])
def test_forward_equals_the_formulas_by_hand(bits):
    flat = [v for r in W for v in r]
    gamma = sum(abs(v) for v in flat) / 4  # 0.4375
    if bits == 1.58:
        # W / gamma = [[1.14, -0.46], [0.11, 2.29]] -> round, clamp -> [[1, 0], [0, 1]]
        codes = [[1, 0], [0, 1]]
    else:
        alpha = sum(flat) / 4  # 0.3375: W - alpha = [[0.16, -0.54], [-0.29, 0.66]]
        codes = [[1 if v - alpha >= 0 else -1 for v in r] for r in W]
        assert codes == [[1, -1], [-1, 1]]
    wq = [[c * gamma for c in r] for r in codes]
    expected = [[sum(a * w for a, w in zip(hand_act(x), wq[o])) + b for o, b in zip(range(2), (0.1, -0.1))] for x in X]
    lin = layer(bits)
    with torch.no_grad():
        got = lin(torch.tensor(X))
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6, rtol=0), (got, expected)
    assert torch.equal(lin.quantized_weight(), torch.tensor(codes, dtype=torch.float32) * torch.tensor(gamma))
    # with autograd on (training), the straight-through form gives the same values
    assert torch.equal(lin(torch.tensor(X)), got)


def test_activation_quantization_by_hand():
    from trainforge.quant import quantize_activation
    x = torch.tensor([[1.0, -0.3, 0.004]])
    s = 127 / 1.0
    expected = torch.tensor([[127 / s, -38 / s, 1 / s]])  # -38.1 -> -38, 0.508 -> 1
    assert torch.equal(quantize_activation(x), expected)
    assert torch.equal(quantize_activation(torch.zeros(1, 3)), torch.zeros(1, 3))  # max clamped away from 0


@pytest.mark.parametrize("bits,allowed", [(1.58, {-1.0, 0.0, 1.0}), (1, {-1.0, 1.0})])
def test_quantized_values_are_exactly_codes_times_scale(bits, allowed):
    torch.manual_seed(0)
    lin = BitLinear(64, 48, weight_bits=bits)
    wq = lin.quantized_weight().detach()
    scale = lin.weight.detach().abs().mean()
    codes = wq / scale
    assert set(codes.unique().tolist()) == allowed
    assert torch.equal(codes * scale, wq)


def test_gradients_reach_the_latent_weights_through_the_ste():
    torch.manual_seed(0)
    lin = BitLinear(16, 8, weight_bits=1.58)
    x = torch.randn(4, 16)
    lin(x).pow(2).sum().backward()
    # the straight-through gradient is the gradient w.r.t. the quantized weight, passed unchanged
    from trainforge.quant import quantize_activation
    wq = lin.quantized_weight().detach().requires_grad_(True)
    F.linear(quantize_activation(x), wq, lin.bias.detach()).pow(2).sum().backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
    assert torch.allclose(lin.weight.grad, wq.grad, atol=1e-5)
    # and a step moves the latent full-precision weights
    before = lin.weight.detach().clone()
    torch.optim.SGD(lin.parameters(), lr=0.1).step()
    assert not torch.equal(before, lin.weight)


def test_phase_in_at_zero_is_the_dense_layer_and_blends_in_between():
    torch.manual_seed(0)
    lin = BitLinear(16, 8)
    x = torch.randn(4, 16)
    dense = F.linear(x, lin.weight, lin.bias)
    set_phase_in(lin, 0.0)
    assert torch.equal(lin(x), dense)
    set_phase_in(lin, 1.0)
    with torch.no_grad():
        quantized = lin(x)
    assert not torch.allclose(quantized, dense)
    set_phase_in(lin, 0.5)
    with torch.no_grad():
        half = lin(x)
    assert torch.all((half - torch.minimum(dense, quantized) >= -1e-5) & (torch.maximum(dense, quantized) - half >= -1e-5))
    with pytest.raises(ValueError, match="lambda"):
        set_phase_in(lin, 1.5)


def test_convert_keeps_skip_listed_layers_and_every_weight():
    torch.manual_seed(0)
    model = GPT(11, 8, n_layer=2, n_head=2, n_embd=16)
    extra = nn.Module()
    extra.proj = nn.Linear(16, 16)
    model.extra = extra
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params_before = {name: p for name, p in model.named_parameters()}
    converted = convert_to_bitnet(model, 1.58, skip=["lm_head", "extra.*"])
    assert converted and all("lm_head" not in n and not n.startswith("extra") for n in converted)
    assert type(model.lm_head) is nn.Linear and type(model.extra.proj) is nn.Linear
    assert isinstance(model.transformer.h[0].attn.c_attn, BitLinear)
    assert len(converted) == 2 * 4  # c_attn, c_proj, c_fc, mlp c_proj per block
    after = model.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {n: id(p) for n, p in model.named_parameters()} == {n: id(p) for n, p in params_before.items()}
    assert convert_to_bitnet(model, skip=["lm_head", "extra.*"]) == []  # already converted: nothing changes
    # the tied LM head (shared with the embedding) is never quantized, even when not skipped
    assert "lm_head" not in convert_to_bitnet(GPT(11, 8, n_layer=1, n_head=2, n_embd=16), skip=[])


@pytest.mark.parametrize("bits,norm", [(1.58, False), (1, False), (1.58, True)])
def test_export_then_load_gives_identical_logits(tmp_path, bits, norm):
    torch.manual_seed(0)
    model = GPT(11, 8, n_layer=2, n_head=2, n_embd=16)
    convert_to_bitnet(model, bits, norm=norm)
    with torch.no_grad():  # make the norm gains and biases non-trivial
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    idx = torch.randint(0, 11, (3, 8))
    model.eval()
    with torch.no_grad():
        expected = model(idx)
    sizes = export_bitnet(model, tmp_path / "m.safetensors")
    torch.manual_seed(1)
    fresh = GPT(11, 8, n_layer=2, n_head=2, n_embd=16)  # dense, other weights: everything comes from the file
    load_bitnet(tmp_path / "m.safetensors", fresh).eval()
    with torch.no_grad():
        got = fresh(idx)
    assert torch.equal(got, expected)
    assert fresh.lm_head.weight is fresh.transformer.wte.weight  # the tie survives
    assert sizes.layer_ratio >= 15 and sizes.file_bytes < sizes.dense_bytes


def test_packing_round_trips_and_is_2_and_1_bits():
    g = torch.Generator().manual_seed(0)
    ternary = torch.randint(-1, 2, (1001,), generator=g)
    packed = pack_ternary(ternary)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(1001 / 4)
    assert torch.equal(unpack_ternary(packed, 1001).long(), ternary)
    binary = torch.randint(0, 2, (1001,), generator=g) * 2 - 1
    packed = pack_binary(binary)
    assert packed.numel() == math.ceil(1001 / 8)
    assert torch.equal(unpack_binary(packed, 1001).long(), binary)


def test_packed_layers_are_at_least_15x_smaller(tmp_path):
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    convert_to_bitnet(model, 1.58, skip=["2"])
    sizes = export_bitnet(model, tmp_path / "m.safetensors")
    assert sizes.layer_fp32_bytes == 256 * 256 * 4
    assert sizes.layer_packed_bytes == 256 * 256 // 4 + 4
    assert sizes.layer_ratio >= 15
    assert sizes.file_bytes < sizes.dense_bytes / 5


def test_regularizer_is_zero_on_the_grid_and_target_sparsity_moves_zeros():
    on_grid = layer(1.58, w=[[0.3, -0.3], [0.3, 0.3]])
    assert float(quantization_regularizer(on_grid).detach()) == 0.0
    lin = layer(1.58)  # W = [[0.5, -0.2], [0.05, 1.0]], gamma 0.4375, W_q = [[g, 0], [0, g]]
    g = 0.4375
    by_hand = sum(((w - q) / (g + 1e-5)) ** 2 for w, q in zip((0.5, -0.2, 0.05, 1.0), (g, 0, 0, g))) / 4
    assert float(quantization_regularizer(lin).detach()) == pytest.approx(by_hand, rel=1e-6)
    # target sparsity 0.5: the two smallest |W| (-0.2, 0.05) go to 0, the others to sign * gamma
    assert float(quantization_regularizer(lin, target_sparsity=0.5).detach()) == pytest.approx(by_hand, rel=1e-6)
    by_hand_75 = sum(((w - q) / (g + 1e-5)) ** 2 for w, q in zip((0.5, -0.2, 0.05, 1.0), (0, 0, 0, g))) / 4
    assert float(quantization_regularizer(lin, target_sparsity=0.75).detach()) == pytest.approx(by_hand_75, rel=1e-6)
    assert float(ternary_sparsity(nn.Sequential(lin, layer(1)))) == 0.5  # codes [[1, 0], [0, 1]]; 1-bit not counted
    # pushing towards sparsity: a few steps on the regularizer alone raise the zero fraction
    torch.manual_seed(0)
    model = nn.Sequential(BitLinear(64, 64))
    start = float(ternary_sparsity(model))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(60):
        opt.zero_grad()
        quantization_regularizer(model, target_sparsity=0.8).backward()
        opt.step()
    end = float(ternary_sparsity(model))
    assert start < 0.5 and end > start + 0.2, (start, end)


# -- the run ---------------------------------------------------------------------------------------

BITNET = {"weight_bits": 1.58, "skip": ["net.3"], "phase_in_steps": 7, "regularizer": 0.01, "target_sparsity": 0.4,
          "stochastic_rounding": True}


def make_cfg(tmp_path, name, **fields):
    base = {"max_epochs": 2, "batch_size": 16, "optimizer": {"lr": 3e-3}, "checkpoint": {"every_steps": 5},
            "log": {"every_steps": 4}, "bitnet": BITNET}
    cfg = quiet_cfg(tmp_path, **{**base, **fields})
    cfg["run_dir"] = str(tmp_path / name)
    return TrainConfig.from_dict(cfg)


def test_bitnet_run_logs_sparsity_lambda_and_regularizer(tmp_path):
    train, val = build_data()
    model = build_model()
    result = Trainer(model, make_cfg(tmp_path, "run")).fit(train, val)
    assert isinstance(model.net[0], BitLinear) and type(model.net[3]) is nn.Linear
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r.get("kind") == "train"]
    assert all("bitnet/sparsity" in r and "loss/quant" in r and "bitnet/lambda" in r for r in train_records)
    lams = [r["bitnet/lambda"] for r in train_records]
    assert lams[0] == pytest.approx(4 / 7) and lams[-1] == 1.0
    assert 0 <= result.history["bitnet/sparsity"][-1] <= 1
    saved = json.loads((tmp_path / "run" / "result.json").read_text())["curves"]
    assert "bitnet/sparsity" in saved and "loss/quant" in saved


def test_preempted_and_resumed_bitnet_run_is_bit_identical(tmp_path):
    """Phase-in (lam from the step), stochastic rounding (the RNG), the regularizer's logged parts."""
    train, val = build_data()
    ref_model = build_model()
    ref = Trainer(ref_model, make_cfg(tmp_path, "straight")).fit(train, val)
    cfg = make_cfg(tmp_path, "interrupted")
    for step in (3, 9):  # inside phase-in, then after it, mid-epoch
        with pytest.raises(Preempted):
            Trainer(build_model(), cfg, callbacks=[PreemptAt(step)]).fit(train, val, resume_from="latest")
    model = build_model()
    got = Trainer(model, cfg).fit(train, val, resume_from="latest")
    for k, v in ref_model.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    for name in ("train/loss", "val/loss", "bitnet/sparsity", "bitnet/lambda", "loss/quant"):
        assert got.history[name] == ref.history[name], name


def test_trainer_python_api_converts_before_the_optimizer(tmp_path):
    model = build_model()
    trainer = Trainer(model, make_cfg(tmp_path, "api"))
    latent = model.net[0].weight
    assert any(p is latent for g in trainer.optimizer.param_groups for p in g["params"])
    assert isinstance(trainer.model.net[0], BitLinear)


def test_cli_export_prints_sizes_and_the_file_reproduces_the_model(tmp_path, capsys):
    from trainforge.checkpoint import load_checkpoint
    from trainforge.cli import main
    train, val = build_data()
    cfg = make_cfg(tmp_path, "run", max_epochs=1, bitnet={"weight_bits": 1, "skip": []},
                   model="tiny_project:build_model", data="tiny_project:build_data")
    result = Trainer(build_model(), cfg).fit(train, val)
    out = tmp_path / "model.bitnet.safetensors"
    assert main(["export", str(tmp_path / "run"), "--bitnet", str(out)]) == 0
    text = capsys.readouterr().out
    assert "converted layers: 2" in text and "x smaller" in text and "whole model" in text
    quantized = build_model()
    convert_to_bitnet(quantized, 1, skip=[])
    quantized.load_state_dict(load_checkpoint(result.final_checkpoint)["model"])
    loaded = load_bitnet(out, build_model())
    x = val.tensors[0] if hasattr(val, "tensors") else torch.randn(8, 10)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), quantized.eval()(x))
    dense = make_cfg(tmp_path, "dense", max_epochs=1, bitnet=None, model="tiny_project:build_model",
                     data="tiny_project:build_data")
    Trainer(build_model(), dense).fit(train, val)
    assert main(["export", str(tmp_path / "dense"), "--bitnet", str(out)]) == 2
    assert "trained dense" in capsys.readouterr().err


@pytest.mark.parametrize("field,value", [
    ("weight_bits", 2), ("weight_bits", 1.5), ("act_bits", 1), ("act_bits", 17), ("regularizer", -1.0),
    ("regularizer", float("nan")), ("regularizer", float("inf")), ("target_sparsity", 1.5), ("phase_in_steps", -1),
    ("eps", 0.0), ("skip", "lm_head"), ("unknown", 1),
])
def test_bad_bitnet_config_names_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"bitnet\.{field}"):
        TrainConfig.from_dict({"bitnet": {field: value}})


def test_bitnet_config_cross_checks():
    with pytest.raises(ConfigError, match="regularizer > 0"):
        TrainConfig.from_dict({"bitnet": {"target_sparsity": 0.5}})
    with pytest.raises(ConfigError, match="binary"):
        TrainConfig.from_dict({"bitnet": {"weight_bits": 1, "target_sparsity": 0.5, "regularizer": 0.1}})
    with pytest.raises(ConfigError, match="no nn.Linear layer to convert"):
        Trainer(nn.Sequential(nn.Conv1d(1, 1, 1)), {"bitnet": {}, "log": {"progress": False}})


KILL_CONFIG = """
seed: 3
max_epochs: 2
batch_size: 16
model: tiny_project:build_model
model_args: {sleep: 0.08}
data: tiny_project:build_data
task: classification
optimizer: {lr: 0.003}
grad: {accumulate: 2, clip_norm: 1.0}
checkpoint: {every_steps: 2, keep_last: 2}
log: {progress: false, sinks: [jsonl], every_steps: 3}
bitnet: {weight_bits: 1.58, skip: [], phase_in_steps: 5, regularizer: 0.01, stochastic_rounding: true}
"""


@pytest.mark.slow
def test_sigkill_then_resume_with_bitnet_is_byte_identical(tmp_path):
    import random
    import signal
    import subprocess
    import time

    from test_preemption import TRAINFORGE, env

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(KILL_CONFIG)
    ref = subprocess.run(TRAINFORGE + ["train", str(cfg), "--run-dir", str(tmp_path / "ref")], env=env(),
                         capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    run_dir, rng = tmp_path / "killed", random.Random(9)
    proc = subprocess.Popen(TRAINFORGE + ["train", str(cfg), "--run-dir", str(run_dir)], env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    checkpoints = run_dir / "checkpoints"
    while not (checkpoints.is_dir() and any(checkpoints.glob("step-*"))):
        assert time.time() < deadline and proc.poll() is None, "no checkpoint before the run ended"
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 0.3))  # mid-phase-in (5 steps), mid-epoch, maybe mid-save
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "result.json").exists()  # killed before the end
    out = subprocess.run(TRAINFORGE + ["resume", str(run_dir)], env=env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert final_weights_at(run_dir, "max_epochs reached (2)") == final_weights_at(tmp_path / "ref", "max_epochs reached (2)")


def final_weights_at(run_dir, reason):
    result = json.loads((run_dir / "result.json").read_text())
    assert result["stopped_reason"] == reason, result["stopped_reason"]
    from pathlib import Path
    return (Path(result["final_checkpoint"]) / "model.safetensors").read_bytes()


def test_cli_export_help_explains_every_flag(capsys):
    from trainforge.cli import build_parser, main
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "--help"])
    out = capsys.readouterr().out
    assert "usage: trainforge export" in out and "--bitnet" in out
    assert main(["export", "nowhere", "--bitnet", "x.safetensors"]) == 2


def test_sample_from_a_bitnet_char_lm_run_uses_the_quantized_model(capsys, tmp_path):
    from trainforge.checkpoint import CheckpointManager, load_checkpoint
    from trainforge.cli import main
    from trainforge.recipes import char_lm
    from trainforge.run import build_parts, load_config
    text = tmp_path / "tiny.txt"
    text.write_text("ROMEO: but soft, what light through yonder window breaks?\n" * 40)
    run_dir = tmp_path / "clm"
    sets = [f"recipe_args.path={text}", "max_steps=20", "recipe_args.n_layer=1", "recipe_args.n_embd=32",
            "recipe_args.val_windows=24", "validation.every_steps=10", "checkpoint.every_steps=10",
            "log.progress=false", "bitnet.weight_bits=1.58"]
    assert main(["demo", "char_lm", "--run-dir", str(run_dir), *sum((["--set", s] for s in sets), [])]) == 0
    capsys.readouterr()
    assert main(["sample", str(run_dir), "--prompt", "ROMEO:", "--tokens", "30"]) == 0
    sampled = capsys.readouterr().out
    cfg = load_config(run_dir / "config.yaml", run_dir=str(run_dir))
    model = build_parts(cfg).model
    convert_to_bitnet(model, 1.58)
    latest = CheckpointManager(run_dir / "checkpoints", keep_last=None).latest_valid()
    model.load_state_dict(load_checkpoint(latest.path)["model"])
    assert sampled.rstrip("\n") == char_lm.sample_text(model, cfg, "ROMEO:", max_new_tokens=30, top_k=200).rstrip("\n")
