"""Distributed training under torchrun, on CPU with gloo and 2 processes.

1 process with batch 2B equals 2 processes with per-rank batch B (DDP); only rank 0 writes the run
directory and the metrics it reports are the reduced ones; resume at another world size keeps the
global sample sequence; a killed rank is named and a resume (or an elastic restart) ends
bit-identical to an uninterrupted run; a two-"node" c10d job equals the 2-process one.

Each torchrun launch costs seconds, so one launch is checked for several things (module fixtures).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

dist = pytest.importorskip("torch.distributed")
if not (dist.is_available() and dist.is_gloo_available()):  # pragma: no cover
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

from trainforge.checkpoint import CheckpointManager, load_checkpoint  # noqa: E402
from trainforge.cli import main  # noqa: E402
from trainforge.data.loader import RankBatchSampler, ResumableSampler, make_loader  # noqa: E402

HERE = Path(__file__).parent
STEPS = 12


def config(path: Path, run_dir: Path, **fields) -> Path:
    """A tiny classification run: 144 training samples (9 global batches of 16 an epoch), 12 steps."""
    base = {"run_dir": str(run_dir), "max_steps": STEPS, "batch_size": 8, "seed": 3,
            "model": "dist_project:build_model", "model_args": {"dropout": 0.0},
            "data": "dist_project:build_data", "optimizer": {"lr": 0.01},
            "log": {"progress": False, "sinks": ["jsonl"], "every_steps": 4}, "checkpoint": {"every_steps": 6}}
    base.update(fields)
    path.write_text(json.dumps(base))  # JSON is YAML
    return path


def env(**extra) -> dict:
    e = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
         "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    for k in ("KILL", "STALL", "NAN"):
        e.pop(f"TRAINFORGE_TEST_{k}", None)
    return {**e, **extra}


def cli(*args, extra_env=None, timeout=240) -> subprocess.CompletedProcess:
    """``trainforge ARGS`` in a subprocess (a launch with --nproc runs torchrun under it)."""
    return subprocess.run([sys.executable, "-m", "trainforge", *map(str, args)], env=env(**(extra_env or {})),
                          capture_output=True, text=True, timeout=timeout)


def in_process(capsys, monkeypatch, *args) -> int:
    monkeypatch.syspath_prepend(str(HERE))
    code = main([str(a) for a in args])
    capsys.readouterr()
    return code


def weights(run_dir: Path, name: str | None = None) -> dict[str, torch.Tensor]:
    path = run_dir / "checkpoints" / (name or f"step-{STEPS:09d}")
    return load_checkpoint(path)["model"]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


# --------------------------------------------------------------------------- the sampler, no processes
def test_ranks_split_every_global_batch_as_one_process_with_the_global_batch():
    """Rank slices of every global batch, concatenated, are the 1-process batches of size B x world;
    a resume position (global batches) skips the same on every rank."""
    for length, b, world in [(144, 8, 2), (50, 4, 3), (21, 5, 2)]:
        one = ResumableSampler(length, batch_size=b * world, seed=7)
        ranks = [RankBatchSampler(length, batch_size=b, rank=r, world_size=world, seed=7) for r in range(world)]
        for epoch, skip in [(0, 0), (3, 2)]:
            one.set_epoch(epoch, skip)
            for s in ranks:
                s.set_epoch(epoch, skip)
            per_rank = [list(s) for s in ranks]
            assert len({len(p) for p in per_rank}) == 1  # every rank makes the same number of steps
            glued = [sum((p[i] for p in per_rank), []) for i in range(len(per_rank[0]))]
            expected = [b.tolist() for b in one.index_batches()]
            if len(expected[-1]) < world:  # too short to give every rank a sample: dropped
                expected = expected[:-1]
            assert glued == expected


def test_validation_reads_every_sample_once_over_the_ranks():
    """keep_short (validation under DDP): 49 samples, 8 per rank on 2 ranks: the last global batch of 1
    sample goes to rank 0 alone; nothing is dropped or read twice."""
    ranks = [RankBatchSampler(49, batch_size=8, rank=r, world_size=2, shuffle=False, keep_short=True)
             for r in range(2)]
    seen = sorted(i for s in ranks for batch in s for i in batch)
    assert seen == list(range(49))
    assert [len(list(s)) for s in ranks] == [4, 3]
    assert len(RankBatchSampler(49, batch_size=8, rank=1, world_size=2)) == 3  # training drops it


def test_bad_rank_is_refused():
    with pytest.raises(ValueError, match="rank 2 is not in"):
        RankBatchSampler(10, batch_size=2, rank=2, world_size=2)


def test_make_loader_splits_by_the_given_rank():
    x = torch.arange(40).float().unsqueeze(1)
    loaders = [make_loader(x, batch_size=4, rank=r, world_size=2, seed=1) for r in range(2)]
    whole = make_loader(x, batch_size=8, seed=1)
    got = [torch.cat([a[0], b[0]]) for a, b in zip(*loaders)]
    assert [g.flatten().tolist() for g in got] == [w[0].flatten().tolist() for w in whole]
    assert len(loaders[0]) == len(whole) == 5


def test_ranks_meet_before_the_process_group_is_torn_down(monkeypatch, capsys):
    """At exit after a run that ended on every rank, each waits at a bounded barrier, then destroys
    the group: gloo torn down while a peer still exchanged its last messages aborted that peer
    (SIGABRT) in ~1 of 6-10 runs here. A barrier that fails (a dead peer) is reported and the
    teardown still happens; a rank whose run failed alone tears down at once (its peers may sit in a
    collective it will never join)."""
    from trainforge.distributed import context

    calls = []
    monkeypatch.setattr(context.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(context, "rank", lambda: 1)
    monkeypatch.setattr(context.dist, "monitored_barrier",
                        lambda group=None, timeout=None: calls.append(("barrier", timeout)))
    monkeypatch.setattr(context.dist, "destroy_process_group", lambda: calls.append(("destroy", None)))
    monkeypatch.setattr(context, "_meet_at_exit", False)
    context.shutdown()  # this rank's run failed
    assert calls == [("destroy", None)]

    calls.clear()
    context.meet_at_exit()
    context.shutdown()
    assert [c[0] for c in calls] == ["barrier", "destroy"] and calls[0][1].total_seconds() == context._EXIT_BARRIER_S

    def dead_peer(group=None, timeout=None):
        raise RuntimeError("Connection closed by peer")
    calls.clear()
    monkeypatch.setattr(context.dist, "monitored_barrier", dead_peer)
    context.shutdown()
    assert calls == [("destroy", None)]
    assert "ranks did not meet at exit: Connection closed by peer" in capsys.readouterr().err


# --------------------------------------------------------------------------- in this process, world size 1
@pytest.fixture
def world_of_one(monkeypatch):
    """torchrun's environment for a group of one (this process); the group is destroyed afterwards."""
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(k, v)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_ddp_all_reduces_once_per_optimizer_step_under_accumulation(world_of_one, tmp_path):
    """grad.accumulate 3: the gradient all-reduce runs on the last micro-batch of each group only
    (no_sync on the others), and at the epoch's end, where a group is cut short."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from trainforge import Trainer
    calls = []

    def counting(state, bucket):
        calls.append(1)
        return allreduce_hook(None, bucket)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    cfg = {"run_dir": str(tmp_path / "run"), "max_epochs": 1, "batch_size": 4, "grad": {"accumulate": 3},
           "checkpoint": {"enabled": False}, "log": {"progress": False, "sinks": ["jsonl"]}, "sanity_check": False}
    trainer = Trainer(model, cfg, task="classification")
    assert trainer.dist.enabled and trainer.dist.world_size == 1
    trainer.dist.wrapped.register_comm_hook(None, counting)
    x, y = torch.randn(40, 4), torch.randint(0, 2, (40,))
    result = trainer.fit((x, y))
    # 10 batches: groups of 3, 3, 3 and the epoch's last batch alone -> 4 steps, 4 all-reduces
    assert trainer.state.counters.step == 4
    assert len(calls) == 4


def test_only_a_run_that_ended_on_every_rank_meets_at_exit(world_of_one, tmp_path, monkeypatch):
    from trainforge import Trainer
    from trainforge.distributed import context

    def run(model):
        cfg = {"run_dir": str(tmp_path / f"run{len(list(tmp_path.iterdir()))}"), "max_steps": 2, "batch_size": 4,
               "checkpoint": {"enabled": False}, "log": {"progress": False, "sinks": ["jsonl"]}, "sanity_check": False}
        return Trainer(model, cfg, task="classification").fit((torch.randn(16, 4), torch.randint(0, 2, (16,))))

    monkeypatch.setattr(context, "_meet_at_exit", False)
    with pytest.raises(RuntimeError):
        run(torch.nn.Linear(3, 2))  # the user's model does not fit the data: this rank fails
    assert context._meet_at_exit is False
    run(torch.nn.Linear(4, 2))
    assert context._meet_at_exit is True


# --------------------------------------------------------------------------- DDP = 1 process
@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """For accumulate 1 and 2: a 1-process run with batch 16 and a 2-process DDP run with batch 8."""
    root = tmp_path_factory.mktemp("ddp")
    runs = {}
    for acc in (1, 2):
        one, two = root / f"one-acc{acc}", root / f"two-acc{acc}"
        cfg1 = config(root / f"one{acc}.yaml", one, batch_size=16, grad={"accumulate": acc})
        cfg2 = config(root / f"two{acc}.yaml", two, grad={"accumulate": acc})
        p1 = cli("train", cfg1)
        p2 = cli("train", cfg2, "--nproc", 2)
        assert p1.returncode == 0, p1.stderr
        assert p2.returncode == 0, p2.stderr
        runs[acc] = (one, two, p2)
    return runs


@pytest.mark.parametrize("acc", [1, 2])
def test_ddp_with_batch_b_equals_one_process_with_batch_2b(pair, acc):
    one, two, _ = pair[acc]
    assert max_diff(weights(one), weights(two)) <= 1e-6
    assert max_diff(weights(one, "step-000000006"), weights(two, "step-000000006")) <= 1e-6
    r1, r2 = result(one), result(two)
    # acc 2: 9 global batches an epoch make 5 steps (the last of 1 batch), so 12 steps read 22 batches
    assert r2["summary"]["samples_seen"] == r1["summary"]["samples_seen"] == {1: 12, 2: 22}[acc] * 16


def test_the_summary_names_world_size_and_batches(pair):
    err = pair[1][2].stderr
    assert "world size 2 · per-rank batch 8 · accumulate 1 · global batch 16" in err
    assert err.count("trainforge: finished") == 1  # rank 1 printed nothing


def test_only_rank_0_writes_the_run_directory(pair):
    """The 2-process run directory holds what the 1-process one holds, once: a second writer would
    show as a file of its own, a duplicated line in metrics.jsonl or a second checkpoint set."""
    one, two, _ = pair[1]
    listing = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*"))  # noqa: E731
    assert listing(two) == listing(one)
    records = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert train_steps == [4, 8, 12]
    assert not (two / "error.log").exists()


def test_reported_metrics_are_reduced_over_ranks(pair, monkeypatch):
    """result.json's validation loss and accuracy are those of the whole validation set (each rank
    evaluated its half), computed here by hand from the final weights; the train loss is the global
    batch's (equal to the 1-process run's)."""
    monkeypatch.syspath_prepend(str(HERE))
    import dist_project
    one, two, _ = pair[1]
    model = dist_project.build_model()
    model.load_state_dict(weights(two))
    model.eval()
    _, val = dist_project.build_data(seed=3)  # the run passes its seed to the data function
    x, y = val.tensors
    with torch.no_grad():
        logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits, y).item()
    accuracy = (logits.argmax(1) == y).float().mean().item()
    final = result(two)["summary"]["final"]
    assert final["val/loss"] == pytest.approx(loss, rel=1e-5)
    assert final["val/accuracy"] == pytest.approx(accuracy)
    assert final["train/loss"] == pytest.approx(result(one)["summary"]["final"]["train/loss"], rel=1e-5)
    # throughput counts the global batch's samples: batch 8 on each of 2 ranks
    assert final["throughput/samples_per_s"] == pytest.approx(16 * final["throughput/batches_per_s"], rel=1e-6)


# --------------------------------------------------------------------------- another world size
def continue_from_step_6(src: Path, dst: Path) -> None:
    """``dst``: ``src``'s run directory as it was at step 6 (its later checkpoints and result removed)."""
    shutil.copytree(src, dst)
    for later in (dst / "checkpoints").glob("step-*"):
        if later.name != "step-000000006":
            shutil.rmtree(later)
    (dst / "result.json").unlink()


@pytest.mark.slow
def test_two_process_checkpoint_resumes_on_one_and_back(pair, tmp_path, capsys, monkeypatch):
    """2 -> 1 and 1 -> 2 with the global batch kept (batch_size 8 x 2 = 16 x 1): the global sample
    sequence continues where it stopped, so each ends within 1e-6 of the uninterrupted run."""
    one, two, _ = pair[1]
    down, up = tmp_path / "down", tmp_path / "up"
    continue_from_step_6(two, down)
    assert in_process(capsys, monkeypatch, "resume", down, "--set", "batch_size=16") == 0
    assert max_diff(weights(down), weights(one)) <= 1e-6
    continue_from_step_6(one, up)
    p = cli("resume", up, "--set", "batch_size=8", "--nproc", 2)
    assert p.returncode == 0, p.stderr
    assert "global batch 16 kept" in p.stderr
    assert max_diff(weights(up), weights(two)) <= 1e-6


def test_another_world_size_with_the_same_per_rank_batch_is_refused(pair, tmp_path, capsys, monkeypatch):
    _, two, _ = pair[1]
    down = tmp_path / "down"
    continue_from_step_6(two, down)
    before = sorted(p.name for p in down.rglob("*"))
    monkeypatch.syspath_prepend(str(HERE))
    code = main(["resume", str(down)])
    err = capsys.readouterr().err
    assert code == 2 and "world size: checkpoint 2, run 1" in err and "batch_size" in err
    assert sorted(p.name for p in down.rglob("*")) == before


# --------------------------------------------------------------------------- agreement across ranks
def test_a_nan_on_one_rank_skips_the_step_on_all(tmp_path, capsys, monkeypatch):
    """Rank 1's 5th batch gives a NaN loss: the step is dropped on both ranks (the loss is reduced
    before the non-finite check, the gradients are all-reduced), exactly as a 1-process run whose
    5th global batch is NaN."""
    one, two = tmp_path / "one", tmp_path / "two"
    fields = dict(grad={"non_finite": "skip"}, checkpoint={"every_steps": None, "every_epochs": None})
    monkeypatch.setenv("TRAINFORGE_TEST_NAN", "0:5")
    assert in_process(capsys, monkeypatch, "train", config(tmp_path / "1.yaml", one, batch_size=16, **fields)) == 0
    monkeypatch.delenv("TRAINFORGE_TEST_NAN")
    p = cli("train", config(tmp_path / "2.yaml", two, **fields), "--nproc", 2, extra_env={"TRAINFORGE_TEST_NAN": "1:5"})
    assert p.returncode == 0, p.stderr
    for run in (one, two):
        assert result(run)["summary"]["skipped_steps"] == 1
        assert result(run)["summary"]["weight_version"] == STEPS - 1
    assert max_diff(weights(one), weights(two)) <= 1e-6


@pytest.mark.slow
def test_a_stalled_rank_ends_the_run_after_the_timeout(tmp_path):
    """Rank 1 stops answering (sleeps a minute): rank 0's collective fails after distributed.timeout_s
    and the job ends, saying why, instead of hanging."""
    run = tmp_path / "run"
    started = time.time()
    p = cli("train", config(tmp_path / "c.yaml", run, distributed={"timeout_s": 5}), "--nproc", 2,
            extra_env={"TRAINFORGE_TEST_STALL": "1:3"})
    assert p.returncode == 1, p.stderr
    assert time.time() - started < 55  # well before the stalled rank would have woken up
    assert "rank 0: the process group failed: another rank died or stalled longer than distributed.timeout_s" \
        in p.stderr


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_clipping_and_grokfast_see_the_synchronized_gradient(strategy, tmp_path, capsys, monkeypatch):
    """Clipping to a global norm of 0.05 (active at every step) and a Grokfast EMA filter act on the
    gradient after the sync (FSDP: the norm over every shard, the filter on each rank's shard of the
    reduce-scattered gradient), so 2 processes equal 1."""
    grokfast = {"filter": "ema", "alpha": 0.9, "lamb": 2.0}
    fields = dict(grad={"clip_norm": 0.05}, grokfast=grokfast, checkpoint={"every_steps": None, "every_epochs": None})
    one, two, plain = tmp_path / "one", tmp_path / "two", tmp_path / "plain"
    assert in_process(capsys, monkeypatch, "train", config(tmp_path / "1.yaml", one, batch_size=16, **fields)) == 0
    p = cli("train", config(tmp_path / "2.yaml", two, distributed={"strategy": strategy}, **fields), "--nproc", 2)
    assert p.returncode == 0, p.stderr
    assert result(one)["summary"]["final"]["grad/norm"] > 0.05  # clipping was active
    assert max_diff(weights(one), weights(two)) <= (1e-6 if strategy == "ddp" else 1e-5)
    # the filter changed the run (an equality that holds without it would prove nothing about it)
    assert in_process(capsys, monkeypatch, "train", config(tmp_path / "3.yaml", plain, batch_size=16,
                                                           **{**fields, "grokfast": None})) == 0
    assert max_diff(weights(one), weights(plain)) > 1e-3


# --------------------------------------------------------------------------- kill -9, restarts
@pytest.fixture(scope="module")
def with_dropout(tmp_path_factory):
    """An uninterrupted 2-process run with dropout (so every rank's RNG stream matters)."""
    root = tmp_path_factory.mktemp("dropout")
    ref = root / "ref"
    p = cli("train", config(root / "ref.yaml", ref, model_args={"dropout": 0.2}), "--nproc", 2)
    assert p.returncode == 0, p.stderr
    return root, ref


@pytest.mark.slow
def test_killed_rank_is_named_and_resume_is_bit_identical(with_dropout):
    """Rank 1 is SIGKILLed at its 9th step (after the step-6 checkpoint): the job exits 1 naming rank
    1; `trainforge resume --nproc 2` then ends bit-identical to the uninterrupted run."""
    root, ref = with_dropout
    run = root / "killed"
    cfg = config(root / "killed.yaml", run, model_args={"dropout": 0.2})
    p = cli("train", cfg, "--nproc", 2, extra_env={"TRAINFORGE_TEST_KILL": "1:9"})
    assert p.returncode == 1, p.stderr
    assert "rank 1 (running): died without exiting" in p.stderr
    assert [i.name for i in CheckpointManager(run / "checkpoints", keep_last=None).list()] == ["step-000000006"]
    p = cli("resume", run, "--nproc", 2)
    assert p.returncode == 0, p.stderr
    assert all(torch.equal(a, b) for a, b in zip(weights(run).values(), weights(ref).values()))


@pytest.mark.slow
def test_elastic_restart_finishes_with_the_uninterrupted_weights(with_dropout):
    """Under --max-restarts 1 torchrun restarts the group after rank 1 is killed; every worker
    resumes from the newest complete checkpoint by itself, and the run ends as the uninterrupted one."""
    root, ref = with_dropout
    run = root / "elastic"
    cfg = config(root / "elastic.yaml", run, model_args={"dropout": 0.2})
    p = cli("train", cfg, "--nproc", 2, "--max-restarts", 1, extra_env={"TRAINFORGE_TEST_KILL": "1:9"})
    assert p.returncode == 0, p.stderr
    assert "resuming from" in p.stderr and "step-000000006" in p.stderr
    assert all(torch.equal(a, b) for a, b in zip(weights(run).values(), weights(ref).values()))


@pytest.mark.slow
def test_preemption_exits_75_through_torchrun_and_resumes(tmp_path):
    """SIGTERM to `trainforge train --nproc 2`: torchrun passes it on, the ranks agree on the boundary,
    rank 0 checkpoints, and the launcher exits 75 (not torchrun's 1)."""
    run = tmp_path / "run"
    cfg = config(tmp_path / "c.yaml", run, max_steps=60, model_args={"sleep": 0.05},
                 checkpoint={"every_steps": None, "every_epochs": None})
    proc = subprocess.Popen([sys.executable, "-m", "trainforge", "train", str(cfg), "--nproc", "2"], env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text():
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    assert "preempted by SIGTERM" in err and err.count("preempted by") == 1  # rank 0 alone says it
    (saved,) = CheckpointManager(run / "checkpoints", keep_last=None).list()
    assert 4 <= saved.step < 60
    p = cli("resume", run, "--nproc", 2)
    assert p.returncode == 0, p.stderr
    assert f"at step {saved.step}" in p.stderr and result(run)["summary"]["steps"] == 60


# --------------------------------------------------------------------------- two "nodes"
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_node_c10d_job_equals_the_two_process_run(pair, tmp_path):
    """Two torchrun launches (--nnodes 2, c10d rendezvous on 127.0.0.1), one worker each."""
    _, two, _ = pair[1]
    run = tmp_path / "nodes"
    cfg = config(tmp_path / "n.yaml", run)
    port = free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "tf-test",
           "-m", "trainforge", "train", str(cfg)]
    nodes = [subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [n.communicate(timeout=240) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outs
    assert max_diff(weights(run), weights(two)) <= 1e-6


# --------------------------------------------------------------------------- FSDP
def test_fsdp_refuses_a_model_without_blocks():
    from trainforge.config import ConfigError
    from trainforge.distributed.context import DistContext
    from trainforge.distributed.wrap import blocks_of, wrap_fsdp
    with pytest.raises(ConfigError, match="no sub-modules with parameters to shard; use distributed.strategy: ddp"):
        wrap_fsdp(torch.nn.Linear(3, 3), DistContext(True, 0, 2, 0, "gloo", "fsdp"), torch.device("cpu"))
    mlp = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    assert blocks_of(mlp) == [mlp[0], mlp[2]]


@pytest.fixture(scope="module")
def fsdp(pair):
    """A 2-process FSDP run of the same config as pair[1]'s, logged verbosely every 2 steps (gradient
    extremes and the weights' norm are collectives under FSDP: every rank must take them together)."""
    root = pair[1][0].parent
    run = root / "fsdp"
    log = {"progress": False, "sinks": ["jsonl"], "every_steps": 2, "level": "verbose"}
    p = cli("train", config(root / "fsdp.yaml", run, distributed={"strategy": "fsdp"}, log=log), "--nproc", 2)
    assert p.returncode == 0, p.stderr
    return run, p


def test_fsdp_equals_one_process(pair, fsdp):
    one, _, _ = pair[1]
    run, p = fsdp
    assert "distributed fsdp (gloo) · world size 2" in p.stderr
    assert max_diff(weights(one), weights(run)) <= 1e-5
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train" and "grad/max" in r] == list(range(2, STEPS + 1, 2))
    assert result(run)["summary"]["final"]["val/loss"] == pytest.approx(result(one)["summary"]["final"]["val/loss"],
                                                                        rel=1e-5)


def test_fsdp_with_accumulation_equals_one_process(pair, tmp_path):
    """grad.accumulate 2: FSDP skips the reduce-scatter on the first micro-batch of each group and
    syncs on the last, the epoch's single-batch group included."""
    one, _, _ = pair[2]
    run = tmp_path / "fsdp-acc"
    p = cli("train", config(tmp_path / "f.yaml", run, distributed={"strategy": "fsdp"}, grad={"accumulate": 2}),
            "--nproc", 2)
    assert p.returncode == 0, p.stderr
    assert max_diff(weights(one), weights(run)) <= 1e-5


def test_fsdp_checkpoint_holds_every_rank_shard_under_its_manifest(fsdp, tmp_path):
    run, _ = fsdp
    ckpt = run / "checkpoints" / f"step-{STEPS:09d}"
    files = json.loads((ckpt / "MANIFEST.json").read_text())["files"]
    assert {"shards/.metadata", "shards/__0_0.distcp", "shards/__1_0.distcp"} <= set(files)
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp dir left
    broken = tmp_path / "broken"
    shutil.copytree(run / "checkpoints", broken)
    shard = broken / ckpt.name / "shards" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    (info,) = [i for i in CheckpointManager(broken, keep_last=None).list() if i.name == ckpt.name]
    assert not info.valid and "__1_0.distcp" in info.reason


@pytest.mark.slow
def test_fsdp_checkpoint_resumes_on_one_process_and_back(pair, fsdp, tmp_path, capsys, monkeypatch):
    """A 2-process FSDP checkpoint resumes on 1 process (resharded on load), and a 1-process one on
    2 FSDP processes; each ends within 1e-5 of the uninterrupted run."""
    one, _, _ = pair[1]
    run, _ = fsdp
    down, up = tmp_path / "down", tmp_path / "up"
    continue_from_step_6(run, down)
    assert in_process(capsys, monkeypatch, "resume", down, "--set", "batch_size=16") == 0
    assert max_diff(weights(down), weights(one)) <= 1e-5
    continue_from_step_6(one, up)
    p = cli("resume", up, "--set", "batch_size=8", "--set", "distributed.strategy=fsdp", "--nproc", 2)
    assert p.returncode == 0, p.stderr
    assert max_diff(weights(up), weights(run)) <= 1e-5


@pytest.mark.slow
def test_fsdp_killed_and_resumed_is_bit_identical(tmp_path):
    cfg = dict(model_args={"dropout": 0.2}, distributed={"strategy": "fsdp"})
    ref, run = tmp_path / "ref", tmp_path / "killed"
    p = cli("train", config(tmp_path / "ref.yaml", ref, **cfg), "--nproc", 2)
    assert p.returncode == 0, p.stderr
    p = cli("train", config(tmp_path / "k.yaml", run, **cfg), "--nproc", 2, extra_env={"TRAINFORGE_TEST_KILL": "0:9"})
    assert p.returncode == 1 and "rank 0 (running): died without exiting" in p.stderr, p.stderr
    p = cli("resume", run, "--nproc", 2)
    assert p.returncode == 0, p.stderr
    assert all(torch.equal(a, b) for a, b in zip(weights(run).values(), weights(ref).values()))


def test_grokfast_on_fsdp_shards_equals_the_whole_gradient_and_a_nan_skips_on_every_rank():
    """EMA and MA filters on 2 ranks' FSDP2 shards, against the same filter on a plain model: every
    filtered gradient and the state gathered to rank 0 equal it exactly, though the NaN planted at
    step 1 lies in rank 1's shard alone (the finite flag is all-reduced: rank 0's state skips the
    step as well). See tests/fsdp_grokfast_check.py."""
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(free_port()), str(HERE / "fsdp_grokfast_check.py")], env=env(), capture_output=True,
                       text=True, timeout=240)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "rank 0: ok" in p.stdout and "rank 1: ok" in p.stdout


@pytest.mark.slow
def test_fsdp_grokfast_killed_and_resumed_is_bit_identical(tmp_path, capsys, monkeypatch):
    """FSDP with a Grokfast MA filter (its queue full from step 3): each rank's filter state is its
    shards', gathered into rank 0's checkpoint; killed after the step-6 checkpoint, the run resumes at
    world size 2 (each rank its own filter state back) and ends bit-identical to an uninterrupted
    one. Resuming it on 1 process is refused naming grokfast and the world sizes, nothing written."""
    cfg = dict(model_args={"dropout": 0.2}, distributed={"strategy": "fsdp"},
               grokfast={"filter": "ma", "window": 3, "lamb": 2.0})
    ref, run = tmp_path / "ref", tmp_path / "killed"
    p = cli("train", config(tmp_path / "ref.yaml", ref, **cfg), "--nproc", 2)
    assert p.returncode == 0, p.stderr
    p = cli("train", config(tmp_path / "k.yaml", run, **cfg), "--nproc", 2, extra_env={"TRAINFORGE_TEST_KILL": "0:9"})
    assert p.returncode == 1 and "rank 0 (running): died without exiting" in p.stderr, p.stderr
    saved = load_checkpoint(run / "checkpoints" / "step-000000006")["tensors"]["callback/grokfast"]
    assert saved["world_size"] == 2 and len(saved["ranks"]) == 2
    shapes = [s for r in saved["ranks"] for g in r["shapes"] for s in g]
    assert sum(torch.Size(s).numel() for s in shapes) == sum(v.numel() for v in weights(ref).values())  # shards
    before = sorted(str(p) for p in run.rglob("*"))
    monkeypatch.syspath_prepend(str(HERE))
    code = main(["resume", str(run), "--set", "batch_size=16"])
    err = capsys.readouterr().err
    assert code == 2 and "grokfast: the checkpoint's filter state is sharded over 2 FSDP ranks" in err, err
    assert "resharding the grokfast filter's state is not supported: resume at world size 2" in err
    assert sorted(str(p) for p in run.rglob("*")) == before
    p = cli("resume", run, "--nproc", 2)
    assert p.returncode == 0, p.stderr
    assert all(torch.equal(a, b) for a, b in zip(weights(run).values(), weights(ref).values()))


# --------------------------------------------------------------------------- the launcher's verdict
def test_a_bad_config_is_refused_once_before_any_worker_starts(tmp_path):
    run = tmp_path / "run"
    p = cli("train", config(tmp_path / "c.yaml", run, optimizer={"lr": -1}), "--nproc", 2)
    assert p.returncode == 2
    assert p.stderr.count("field `optimizer.lr`") == 1 and "torch.distributed" not in p.stderr
    assert not run.exists()



def write_codes(tmp_path, **codes):
    for rank, code in codes.items():
        (tmp_path / f"rank{rank[1:]}.exit").write_text(f"{code}\n")


def test_launcher_returns_the_workers_exit_code_not_torchruns(tmp_path, capsys):
    from trainforge.distributed.launch import outcome
    write_codes(tmp_path, r0=75, r1=75)
    assert outcome(1, tmp_path, 2) == 75  # preempted: torchrun says 1, the workers say 75
    write_codes(tmp_path, r0=2, r1=2)
    assert outcome(1, tmp_path, 2) == 2
    write_codes(tmp_path, r0=0, r1=0)
    assert outcome(0, tmp_path, 2) == 0


def test_launcher_names_the_rank_that_died(tmp_path, capsys):
    from trainforge.distributed.launch import outcome
    write_codes(tmp_path, r0=143, r1="running")
    assert outcome(1, tmp_path, 2) == 1
    err = capsys.readouterr().err
    assert "rank 1 (running): died without exiting" in err and "rank 0" not in err.split(":")[1]
    assert outcome(1, tmp_path / "nothing", 2) == 1
    assert "before any worker started" in capsys.readouterr().err


def test_worker_command_drops_the_launcher_flags():
    from trainforge.distributed.launch import torchrun_command
    cmd = torchrun_command(["train", "c.yaml", "--nproc", "2", "--max-restarts=3", "--set", "seed=1"], 2, 3)
    assert cmd[-6:] == ["-m", "trainforge", "train", "c.yaml", "--set", "seed=1"]
    assert "--nproc-per-node=2" in cmd and "--max-restarts=3" in cmd and "--standalone" in cmd
