"""A real CLI run killed with SIGKILL at random moments (checkpoint writes included), or preempted
with SIGTERM mid-epoch with 2 workers, then resumed until done, ends byte-identical to a run that
was never interrupted."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent
TRAINFORGE = [sys.executable, "-m", "trainforge.cli"]

CONFIG = """
seed: 3
max_epochs: 3
batch_size: 16
model: tiny_project:build_model
model_args: {{sleep: {sleep}}}
data: tiny_project:build_data
task: classification
num_workers: {workers}
optimizer: {{lr: 0.003}}
grad: {{accumulate: 2, clip_norm: 1.0}}
checkpoint: {{every_steps: 2, keep_last: 2}}
validation: {{every_epochs: 1}}
log: {{progress: false, sinks: [jsonl], every_steps: 3}}
"""

pytestmark = pytest.mark.slow


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent / "src"), e.get("PYTHONPATH", "")])
    return e


def write_config(tmp_path, sleep=0.03, workers=0):
    path = tmp_path / "cfg.yaml"
    path.write_text(CONFIG.format(sleep=sleep, workers=workers))
    return path


def start(args):
    return subprocess.Popen(TRAINFORGE + args, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def final_weights(run_dir: Path) -> bytes:
    result = json.loads((run_dir / "result.json").read_text())
    assert result["stopped_reason"] == "max_epochs reached (3)", result["stopped_reason"]
    return (Path(result["final_checkpoint"]) / "model.safetensors").read_bytes()


def reference(tmp_path, cfg):
    out = subprocess.run(TRAINFORGE + ["train", str(cfg), "--run-dir", str(tmp_path / "ref")], env=env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return final_weights(tmp_path / "ref")


def train_with_kills(cfg: Path, run_dir: Path, rng: random.Random, *, max_kills: int, wait: tuple[float, float],
                     max_attempts: int) -> int:
    """Train ``cfg`` into ``run_dir``, SIGKILLing the process at a random moment (``wait`` seconds
    after it starts) up to ``max_kills`` times and resuming after each, until the run finishes.
    Returns how many kills landed (a process that had already finished was not killed)."""
    kills = 0
    for _ in range(max_attempts):
        has_config = (run_dir / "config.yaml").exists()
        proc = start(["resume", str(run_dir)] if has_config else ["train", str(cfg), "--run-dir", str(run_dir)])
        if kills < max_kills:
            time.sleep(rng.uniform(*wait))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                continue
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        if "already finished" in err or (run_dir / "result.json").exists():
            return kills
    raise AssertionError("run never finished")


def test_sigkill_at_random_moments_then_resume_is_byte_identical(tmp_path):
    cfg = write_config(tmp_path, sleep=0.1)  # ~4 s of training after ~1.5 s of imports
    expected = reference(tmp_path, cfg)
    run_dir = tmp_path / "killed"
    kills = train_with_kills(cfg, run_dir, random.Random(20261122), max_kills=5, wait=(1.0, 3.5), max_attempts=19)
    assert kills >= 3
    assert final_weights(run_dir) == expected
    # no temporary directories are left behind once the run completed
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]


def test_sigterm_mid_epoch_with_two_workers_exits_75_and_resumes_identically(tmp_path):
    cfg = write_config(tmp_path, workers=2)
    expected = reference(tmp_path, cfg)
    run_dir = tmp_path / "preempted"
    proc = start(["train", str(cfg), "--run-dir", str(run_dir)])
    deadline = time.time() + 120
    while not (run_dir / "checkpoints").exists() or not list((run_dir / "checkpoints").glob("step-*")):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert time.time() - t0 < 30  # well within torchrun's grace before SIGKILL
    assert proc.returncode == 75, err
    assert "preempted by SIGTERM" in err and f"trainforge resume {run_dir}" in err
    meta = json.loads((run_dir / "result.json").read_text())
    assert meta["stopped_reason"] == "preempted"
    step = meta["summary"]["steps"]
    assert 0 < step < 18 and step % 6 != 0  # stopped inside an epoch (6 optimizer steps per epoch)
    out = subprocess.run(TRAINFORGE + ["resume", str(run_dir)], env=env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert final_weights(run_dir) == expected
    again = subprocess.run(TRAINFORGE + ["resume", str(run_dir)], env=env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "already finished" in again.stderr


def test_second_sigint_exits_at_once_and_checkpoints_stay_valid(tmp_path):
    cfg = write_config(tmp_path, sleep=0.2)
    run_dir = tmp_path / "interrupted"
    proc = start(["train", str(cfg), "--run-dir", str(run_dir)])
    deadline = time.time() + 120
    while not list((run_dir / "checkpoints").glob("step-*")) if (run_dir / "checkpoints").exists() else True:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode in (130, 75), err
    listing = subprocess.run(TRAINFORGE + ["checkpoints", str(run_dir)], env=env(), capture_output=True, text=True)
    assert listing.returncode == 0 and "step-" in listing.stdout
    from trainforge.checkpoint import CheckpointManager
    assert CheckpointManager(run_dir / "checkpoints", keep_last=None).latest_valid() is not None


SLOW_WRITER = """
import sys, time
import trainforge.checkpoint.manager as ck
original = ck.write_files
def slow(tmp, job):
    original(tmp, job)          # every file of the checkpoint is on disk, not yet renamed into place
    if job.name != "step-000000002":
        time.sleep(30)          # the test kills the process here
ck.write_files = slow
from trainforge.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_during_a_checkpoint_write_then_resume_is_byte_identical(tmp_path):
    cfg = write_config(tmp_path, sleep=0.0)
    expected = reference(tmp_path, cfg)
    run_dir = tmp_path / "torn"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, "train", str(cfg), "--run-dir", str(run_dir)],
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    ckpts = run_dir / "checkpoints"
    while not (ckpts.exists() and any(p.name.startswith(".tmp-step-000000004") for p in ckpts.iterdir())):
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # inside the write of step 4: a half-made checkpoint on disk
    proc.wait()
    assert [p.name for p in ckpts.iterdir() if not p.name.startswith(".")] == ["step-000000002"]
    out = subprocess.run(TRAINFORGE + ["resume", str(run_dir)], env=env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert final_weights(run_dir) == expected
    assert not [p for p in ckpts.iterdir() if p.name.startswith(".tmp-")]  # the torn write was cleaned up
