"""The CLI: every command end to end, and every bad flag, key or path exits 2 with one message."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainforge.cli import main

HERE = Path(__file__).parent


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def user_config(tmp_path, monkeypatch):
    """A config that names user code and a data spec (an .npz file), as a user project would."""
    monkeypatch.syspath_prepend(str(HERE))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 10)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"""
run_dir: {tmp_path / 'run'}
max_epochs: 3
batch_size: 20
model: tiny_project:build_model
model_args: {{dropout: 0.0}}
data: {{path: {tmp_path / 'data.npz'}, val_fraction: 0.2}}
optimizer: {{lr: 0.01}}
log: {{progress: false, sinks: [jsonl]}}
""")
    return cfg


def test_train_with_user_code_and_data_spec(capsys, user_config, tmp_path):
    code, out, err = run_cli(capsys, "train", user_config)
    assert code == 0, err
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["summary"]["steps"] == 24 and result["stopped_reason"] == "max_epochs reached (3)"
    assert result["summary"]["final"]["val/accuracy"] > 0.7
    assert "report.png" in err and (tmp_path / "run" / "report.png").exists()
    # checkpoints listing and inspect
    code, out, _ = run_cli(capsys, "checkpoints", tmp_path / "run")
    assert code == 0 and "step-000000024" in out
    code, out, _ = run_cli(capsys, "inspect", tmp_path / "run" / "checkpoints" / "step-000000024")
    assert code == 0 and "step 24" in out and "net.0.weight: [32, 10]" in out
    # training again into the same run dir is refused: it would mix two runs' checkpoints
    code, _, err = run_cli(capsys, "train", user_config)
    assert code == 2 and "already holds a run" in err and "trainforge resume" in err
    # resuming a finished run is a no-op that says so
    code, _, err = run_cli(capsys, "resume", tmp_path / "run")
    assert code == 0 and "already finished" in err
    # report of two runs overlaid
    code, out, _ = run_cli(capsys, "report", tmp_path / "run", tmp_path / "run", "--out", tmp_path / "both.png")
    assert code == 0 and (tmp_path / "both.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_overrides_and_run_dir(capsys, user_config, tmp_path):
    code, _, err = run_cli(capsys, "train", user_config, "--set", "max_epochs=1", "--set", "optimizer.name=sgd",
                           "--run-dir", tmp_path / "other")
    assert code == 0, err
    saved = (tmp_path / "other" / "config.yaml").read_text()
    assert "max_epochs: 1" in saved and "name: sgd" in saved


BAD = [
    (["train", "{cfg}", "--bogus"], "unrecognized arguments: --bogus"),
    (["train", "{cfg}", "--set", "optimizer.lrr=1"], "unknown key `optimizer.lrr`"),
    (["train", "{cfg}", "--set", "optimizer.lr=-1"], "field `optimizer.lr`"),
    (["train", "{cfg}", "--set", "nonsense"], "must look like key=value"),
    (["train", "{cfg}", "--nproc", "0"], "argument --nproc: 0 is out of range"),
    (["train", "{cfg}", "--max-restarts", "-1"], "-1 is out of range"),
    (["train", "{cfg}", "--nproc", "two"], "invalid int value: 'two'"),
    (["train", "{tmp}/missing.yaml"], "does not exist"),
    (["train", "{tmp}/broken.yaml"], "not valid YAML"),
    (["train", "{cfg}", "--set", "data.path={tmp}/nothere.npz"], "nothere.npz"),
    (["train", "{cfg}", "--set", "model=tiny_project:nope"], "has no attribute 'nope'"),
    (["train", "{cfg}", "--set", "model_args.depth=3"], "model_args"),
    (["demo", "nosuch"], "known recipes: graph_walks, char_lm, digits"),
    (["demo", "graph_walks", "--set", "recipe_args.n_vertexes=3"], "recipe_args.n_vertexes"),
    (["resume", "{tmp}"], "not a run directory"),
    (["checkpoints", "{tmp}/nowhere"], "does not exist"),
    (["inspect", "{tmp}/nowhere"], "does not exist"),
    (["inspect", "{tmp}"], "MANIFEST"),
    (["report", "{tmp}/nowhere"], "does not exist"),
    (["sample", "{tmp}"], "not a run directory"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "required: COMMAND"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) or "nothing" for a, _ in BAD])
def test_bad_input_exits_2_with_one_message(capsys, user_config, tmp_path, args, message):
    (tmp_path / "broken.yaml").write_text("max_epochs: [1,\n")
    args = [a.format(cfg=user_config, tmp=tmp_path) for a in args]
    code, out, err = run_cli(capsys, *args)
    assert code == 2, err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("command", ["train", "resume", "demo", "report", "checkpoints", "inspect", "sample"])
def test_help_explains_every_flag(capsys, command):
    code, out, _ = run_cli(capsys, command, "--help")
    assert code == 0 and "usage: trainforge " + command in out
    from trainforge.cli import build_parser
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    for action in sub._actions:
        assert action.help, f"{command}: {action.option_strings or action.dest} has no help text"
        assert action.help.split()[0] in out


@pytest.mark.slow
def test_graph_walks_tiny_end_to_end_as_a_subprocess(tmp_path):
    from trainforge.recipes.graph_walks import tiny_args
    run_dir = tmp_path / "gw"
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
    cmd = [sys.executable, "-m", "trainforge.cli", "demo", "graph_walks", "--run-dir", str(run_dir),
           "--set", "recipe_args=" + json.dumps(tiny_args()), "--set", "log.progress=false"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["gate_passed"] is True, result.get("gate_failure_reason")
    assert result["stopped_reason"].startswith("gate passed")
    steps = result["summary"]["steps"]
    curves = result["curves"]
    assert curves["train/loss"]["step"] == list(range(1, steps + 1))
    epochs = result["summary"]["epochs_completed"]
    assert len(curves["eval/edge_compliance"]["value"]) == epochs == len(curves["eval/rule_compliance"]["value"])
    assert curves["eval/edge_compliance"]["value"][-1] > 0.95 and curves["eval/rule_compliance"]["value"][-1] > 0.80
    # retention: at most the last 3 plus the pinned gate checkpoint
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if not p.name.startswith("."))
    assert len(names) <= 4 and Path(result["final_checkpoint"]).name in names
    manifest = json.loads((Path(result["final_checkpoint"]) / "MANIFEST.json").read_text())
    assert manifest["pinned"] is True
    assert (run_dir / "report.png").read_bytes()[:4] == b"\x89PNG"
    for where in ("run dir:", "result.json:", "report.png:"):
        assert where in out.stderr
    again = subprocess.run([sys.executable, "-m", "trainforge.cli", "resume", str(run_dir)], capture_output=True,
                           text=True, env=env, timeout=300)
    assert again.returncode == 0 and "already finished" in again.stderr


@pytest.mark.slow
def test_digits_recipe_reaches_097_through_the_cli(capsys, tmp_path):
    cfg = HERE.parent / "configs" / "digits.yaml"
    code, _, err = run_cli(capsys, "train", cfg, "--run-dir", tmp_path / "digits", "--set", "log.progress=false")
    assert code == 0, err
    result = json.loads((tmp_path / "digits" / "result.json").read_text())
    assert result["summary"]["best"]["val/accuracy"] >= 0.97
    assert result["gate_passed"] is True


def test_sample_prints_text_from_a_char_lm_run(capsys, tmp_path):
    text = tmp_path / "tiny.txt"
    text.write_text("ROMEO: but soft, what light through yonder window breaks?\n" * 40)
    run_dir = tmp_path / "clm"
    code, _, err = run_cli(capsys, "demo", "char_lm", "--run-dir", run_dir, "--set", f"recipe_args.path={text}",
                           "--set", "max_steps=30", "--set", "recipe_args.n_layer=1", "--set", "recipe_args.n_embd=32",
                           "--set", "recipe_args.val_windows=24", "--set", "validation.every_steps=15",
                           "--set", "checkpoint.every_steps=15", "--set", "log.progress=false")
    assert code == 0, err
    code, out, err = run_cli(capsys, "sample", run_dir, "--prompt", "ROMEO:", "--tokens", "40")
    assert code == 0, err
    assert out.startswith("ROMEO:") and len(out.rstrip("\n")) >= len("ROMEO:") + 40 - 1
    assert set(out) <= set(text.read_text()) | {"\n"}
    code, _, err = run_cli(capsys, "sample", run_dir, "--prompt", "ROMEO: zzz")
    assert code == 2 and len(err.strip().splitlines()) == 1, err


def test_user_code_beside_the_config_imports_without_pythonpath(tmp_path):
    """`model: mymodels:build` from the project folder works through the console script, as `python -m` would."""
    script = Path(sys.executable).parent / "trainforge"
    if not script.exists():
        pytest.skip("the trainforge console script is not installed beside this python")
    (tmp_path / "mymodels.py").write_text(
        "import torch\n"
        "def build(width=8):\n    return torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.ReLU(), torch.nn.Linear(width, 2))\n"
        "def data():\n    g = torch.Generator().manual_seed(0)\n    x = torch.randn(64, 4, generator=g)\n"
        "    return (x, (x[:, 0] > 0).long()), None\n")
    (tmp_path / "run.yaml").write_text("run_dir: runs/mine\nmax_epochs: 1\nbatch_size: 16\nmodel: mymodels:build\n"
                                       "data: mymodels:data\nlog: {progress: false, sinks: [jsonl]}\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([str(script), "train", "run.yaml"], cwd=tmp_path, capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((tmp_path / "runs" / "mine" / "result.json").read_text())["summary"]["steps"] == 4
