"""The failure paths of a run (issue 10): nothing lost, nothing claimed that did not happen.

One test (or a few) per point, each reproducing the failure on the engine before the fix:
a full disk (sync, async, final, preemption saves), runs that train nothing, a refused resume that
must leave the run directory byte-identical, two processes on one run directory, repeated SIGTERM
during a slow checkpoint write, appended data, SIGTERM with checkpointing disabled, impossible
numbers, a foreign checkpoint, bad input that used to end in a traceback, durable state files.
"""

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import trainforge.checkpoint.manager as ckpt_manager
from trainforge import Callback, Preempted, TrainConfig, Trainer
from trainforge.checkpoint import CheckpointManager, CheckpointWriteError
from trainforge.cli import main
from trainforge.config import ConfigError
from trainforge.data.errors import DataError
from trainforge.data.loader import TensorData
from trainforge.events import SkipBatch
from trainforge.runlock import RunDirLocked

HERE = Path(__file__).parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}


def tiny_config(tmp_path, fields: str):
    """``tmp_path/run.yaml`` for tests/tiny_project.py's model and data (``fields`` may replace the data),
    quiet sinks, run dir ``tmp_path/run``."""
    data = "" if "\ndata:" in "\n" + fields else "data: tiny_project:build_data\n"
    config = tmp_path / "run.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\nmodel: tiny_project:build_model\n{data}"
                      f"log: {{progress: false, sinks: [jsonl]}}\n{fields}\n")
    return config


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return TensorData(x, (x[:, 0] > 0).long())


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def cfg(tmp_path, **over):
    base = {"run_dir": str(tmp_path / "run"), "max_epochs": 2, "batch_size": 16, "optimizer": {"lr": 0.01},
            "log": {"progress": False, "sinks": ["jsonl"]}, "validation": {"every_epochs": None},
            "checkpoint": {"every_epochs": 1, "monitor": None, "keep_best": 0}}
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    return TrainConfig.from_dict(base)


def disk_full_after(monkeypatch, good: int):
    """The checkpoint writer succeeds ``good`` times, then the disk is full."""
    original, calls = ckpt_manager.write_files, []

    def write(tmp, job):
        calls.append(job.name)
        if len(calls) > good:
            (tmp / "model.safetensors").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        original(tmp, job)

    monkeypatch.setattr(ckpt_manager, "write_files", write)
    return calls


def result_json(tmp_path):
    return json.loads((tmp_path / "run" / "result.json").read_text())


def tree_hash(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


# --------------------------------------------------------------------------- 1 + 9: failed saves
@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_final_save_on_a_full_disk_fails_the_run_naming_cause_and_last_valid(tmp_path, monkeypatch, async_save):
    disk_full_after(monkeypatch, good=1)  # the end-of-epoch-1 checkpoint lands, the final one does not
    trainer = Trainer(model(), cfg(tmp_path, checkpoint={"async_save": async_save}))
    with pytest.raises(CheckpointWriteError) as e:
        trainer.fit(data())
    message = str(e.value)
    assert "no space left on device: " in message and " MB needed in " + str(tmp_path / "run" / "checkpoints") in message
    last = tmp_path / "run" / "checkpoints" / "step-000000004"
    assert f"the last valid checkpoint is {last}" in message
    result = result_json(tmp_path)
    assert result["final_checkpoint"] == str(last) and result["phase"] == "ERROR"
    assert result["stopped_reason"].startswith("error: CheckpointWriteError")
    assert not (tmp_path / "run" / "checkpoints" / "step-000000008").exists()
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".")]


def test_async_final_save_failure_exits_nonzero_and_claims_no_checkpoint(tmp_path, monkeypatch, capsys):
    disk_full_after(monkeypatch, good=0)
    monkeypatch.syspath_prepend(str(HERE))
    config = tiny_config(tmp_path, "max_steps: 3\nbatch_size: 16\ncheckpoint: {every_epochs: null, async_save: true}")
    code, _, err = run_cli(capsys, "train", config)
    assert code == 1, err
    assert "no space left on device" in err and "there is no valid checkpoint yet" in err
    assert "checkpoint:  " not in err and "finished" not in err
    assert result_json(tmp_path)["final_checkpoint"] is None


def test_periodic_save_failure_warns_retries_and_three_in_a_row_stop_the_run(tmp_path, monkeypatch):
    calls = disk_full_after(monkeypatch, good=2)
    trainer = Trainer(model(), cfg(tmp_path, max_epochs=3, checkpoint={"every_epochs": None, "every_steps": 1}))
    with pytest.warns(UserWarning, match=r"CHECKPOINT NOT SAVED \(1/3\).*no space left"):
        with pytest.raises(CheckpointWriteError, match=r"3 checkpoint saves in a row failed") as e:
            trainer.fit(data())
    assert len(calls) == 5 and e.value.last_valid == tmp_path / "run" / "checkpoints" / "step-000000002"
    assert result_json(tmp_path)["final_checkpoint"] == str(e.value.last_valid)


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_one_failed_periodic_save_is_retried_and_the_run_finishes(tmp_path, monkeypatch, async_save):
    original, calls = ckpt_manager.write_files, []

    def flaky(tmp, job):
        calls.append(job.name)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        original(tmp, job)

    monkeypatch.setattr(ckpt_manager, "write_files", flaky)
    with pytest.warns(UserWarning, match="CHECKPOINT NOT SAVED"):
        result = Trainer(model(), cfg(tmp_path, checkpoint={"async_save": async_save})).fit(data())
    assert result.final_checkpoint.endswith("step-000000008") and Path(result.final_checkpoint).is_dir()
    assert calls == ["step-000000004", "step-000000008"]  # the failed one, then the next boundary's


def test_torch_unexpected_pos_on_a_full_disk_is_named_as_a_full_disk(tmp_path, monkeypatch):
    def torn(tmp, job):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(ckpt_manager, "write_files", torn)
    monkeypatch.setattr(ckpt_manager, "_free_bytes", lambda directory: 1000)
    manager = CheckpointManager(tmp_path / "ck")
    with pytest.raises(CheckpointWriteError, match=r"no space left on device: [0-9.]+ MB needed in .*ck \(0.1 MB free\)"):
        manager.save("a", {"model": {"w": torch.zeros(1000)}, "tensors": {}, "meta": {}}, step=1, epoch=0)


def test_failed_preemption_checkpoint_is_not_reported_as_preempted(tmp_path, monkeypatch):
    disk_full_after(monkeypatch, good=0)

    class Preempt(Callback):
        def on_batch_end(self, trainer):
            trainer.request_preemption("SIGTERM")

    trainer = Trainer(model(), cfg(tmp_path, checkpoint={"every_epochs": None}), callbacks=[Preempt()])
    with pytest.raises(CheckpointWriteError, match=r"preempted by SIGTERM at step 1, but the checkpoint was NOT saved: "
                                                   r".*no space left on device.*no valid checkpoint yet"):
        trainer.fit(data())


# --------------------------------------------------------------------------- 2: runs that train nothing
def test_jsonl_of_text_records_is_an_error_naming_the_text_field(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(HERE))
    path = tmp_path / "text.jsonl"
    path.write_text("".join(json.dumps({"text": f"record {i}", "label": i % 2}) + "\n" for i in range(40)))
    config = tiny_config(tmp_path, f"max_epochs: 1\nbatch_size: 8\ndata: {{path: {path}}}")
    code, _, err = run_cli(capsys, "train", config)
    assert code == 2, err
    assert "hold text" in err and "['text']" in err and "tokenize" in err
    assert "finished" not in err


def test_csv_number_column_with_a_bad_cell_names_file_line_column_and_cell(tmp_path):
    from trainforge.data import load_dataset
    path = tmp_path / "d.csv"
    rows = [f"{i * 0.5},{i % 2}" for i in range(20)]
    rows[6] = "n/a,0"
    path.write_text("x,y\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"d.csv:8: column 'x': cell 'n/a' is not a number"):
        load_dataset(path)
    path.write_text("name,y\n" + "\n".join(f"n{i},{i % 2}" for i in range(20)) + "\n")
    assert load_dataset(path)[0]["name"] == "n0"  # a text column stays text


def test_jsonl_number_field_with_a_bad_value_names_file_line_and_field(tmp_path):
    from trainforge.data import load_dataset
    path = tmp_path / "d.jsonl"
    records = [{"x": i * 0.5, "y": i % 2} for i in range(20)]
    records[4]["x"] = "n/a"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(DataError, match=r"d.jsonl:5: field 'x': value 'n/a' is not a number"):
        load_dataset(path)


def test_an_epoch_whose_every_batch_is_skipped_is_an_error_not_a_finish(tmp_path):
    class SkipAll(Callback):
        def on_batch_start(self, trainer):
            raise SkipBatch()

    with pytest.raises(DataError, match=r"epoch 1: all 4 batch\(es\) were skipped, so nothing was trained "
                                        r"\(4 skipped by a callback"):
        Trainer(model(), cfg(tmp_path), callbacks=[SkipAll()]).fit(data())


def test_batch_size_of_counts_text_columns():
    from trainforge.tasks import batch_size_of
    assert batch_size_of({"text": ["a", "b", "c"], "label": torch.tensor([0, 1, 0])}) == 3
    assert batch_size_of([["a", "b"], torch.tensor([1, 2])]) == 2


# --------------------------------------------------------------------------- 3: refusal touches nothing
@pytest.fixture
def finished_run(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(HERE))
    config = tiny_config(tmp_path, "max_epochs: 1\nbatch_size: 16\ncheckpoint: {every_steps: 3}")
    code, _, err = run_cli(capsys, "train", config)
    assert code == 0, err
    return tmp_path / "run"


def test_a_refused_resume_leaves_every_file_byte_identical(finished_run, capsys):
    before = tree_hash(finished_run)
    steps = json.loads((finished_run / "result.json").read_text())["summary"]["steps"]
    code, _, err = run_cli(capsys, "resume", finished_run, "--set", "batch_size=4", "--set", "max_epochs=2")
    assert code == 2 and "batch_size: 16 -> 4" in err, err
    assert tree_hash(finished_run) == before
    code, _, err = run_cli(capsys, "resume", finished_run, "--set", "max_epochs=2")  # still resumable
    assert code == 0, err
    assert json.loads((finished_run / "result.json").read_text())["summary"]["steps"] == 2 * steps


# --------------------------------------------------------------------------- 4: one writer per run dir
SLOW = """seed: 3
max_epochs: 50
batch_size: 16
model: tiny_project:build_model
model_args: {sleep: 0.05}
data: tiny_project:build_data
checkpoint: {every_epochs: null, every_steps: null}
log: {progress: false, sinks: [jsonl]}
"""


def start(args, **kw):
    return subprocess.Popen([sys.executable, *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def wait_for(predicate, proc, seconds=60):
    deadline = time.time() + seconds
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline
        time.sleep(0.05)


def lock_holder(run_dir):
    try:
        return json.loads((run_dir / ".lock").read_text() or "{}").get("pid")
    except (OSError, ValueError):
        return None


@pytest.mark.slow
def test_a_second_process_into_a_running_run_dir_is_refused_and_a_killed_holder_does_not_block(tmp_path):
    config = tmp_path / "slow.yaml"
    config.write_text(SLOW)
    run_dir = tmp_path / "run"
    first = start(["-m", "trainforge.cli", "train", str(config), "--run-dir", str(run_dir)])
    try:
        wait_for(lambda: lock_holder(run_dir) == first.pid, first)
        second = subprocess.run([sys.executable, "-m", "trainforge.cli", "train", str(config), "--run-dir",
                                 str(run_dir), "--resume"], env=ENV, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert f"is in use by pid {first.pid} on host " in second.stderr
        with pytest.raises(RunDirLocked, match=f"pid {first.pid}"):  # and from Python
            Trainer(model(), cfg(tmp_path, run_dir=str(run_dir))).fit(data())
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    # kill -9 left a lock file with a dead pid: the kernel dropped the lock, the next run goes on
    assert lock_holder(run_dir) == first.pid
    out = subprocess.run([sys.executable, "-m", "trainforge.cli", "resume", str(run_dir), "--set", "max_epochs=1"],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr


# --------------------------------------------------------------------------- 5: SIGTERM during the checkpoint
SLOW_WRITER = """
import pathlib, sys, time
import trainforge.checkpoint.manager as m
original = m.write_files
def slow(tmp, job):
    pathlib.Path(sys.argv[1]).write_text(job.name)
    time.sleep(float(sys.argv[2]))
    original(tmp, job)
m.write_files = slow
from trainforge.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("signals_sent", [2, 3])
def test_sigterm_again_during_a_slow_preemption_checkpoint(tmp_path, signals_sent):
    config = tmp_path / "slow.yaml"
    config.write_text(SLOW)
    run_dir, marker = tmp_path / "run", tmp_path / "writing"
    proc = start(["-c", SLOW_WRITER, str(marker), "2.0", "train", str(config), "--run-dir", str(run_dir)])
    wait_for(lambda: (run_dir / "metrics.jsonl").exists(), proc)
    proc.send_signal(signal.SIGTERM)
    wait_for(marker.exists, proc)  # the preemption checkpoint is being written now
    for _ in range(signals_sent - 1):
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
    _, err = proc.communicate(timeout=120)
    checkpoints = [p for p in (run_dir / "checkpoints").iterdir() if not p.name.startswith(".")]
    if signals_sent == 2:
        assert proc.returncode == 75, err
        assert "received again: noted" in err and "checkpoint saved: " in err
        assert len(checkpoints) == 1 and (checkpoints[0] / "MANIFEST.json").exists()
    else:
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert "exiting now WITHOUT the preemption checkpoint" in err and "(none) are lost" in err
        assert checkpoints == []


# --------------------------------------------------------------------------- 6: the data is part of the identity
def test_resume_on_appended_data_is_refused_unless_allowed(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(HERE))
    path = tmp_path / "d.jsonl"
    g = torch.Generator().manual_seed(0)

    def records(n):
        x = torch.randn(n, 10, generator=g)
        return "".join(json.dumps({"x": row.tolist(), "y": int(row[0] > 0)}) + "\n" for row in x)

    path.write_text(records(96))
    config = tiny_config(tmp_path, f"max_epochs: 1\nbatch_size: 16\ndata: {{path: {path}}}")
    assert run_cli(capsys, "train", config)[0] == 0
    size = path.stat().st_size
    with open(path, "a") as f:
        f.write(records(16))
    run_dir = tmp_path / "run"
    before = tree_hash(run_dir)
    code, _, err = run_cli(capsys, "resume", run_dir, "--set", "max_epochs=2")
    assert code == 2, err
    assert "the training data changed since checkpoint" in err and "training samples: 96 -> 112" in err
    assert f"file {path}: {size:,} -> {path.stat().st_size:,} bytes" in err and "--allow-data-change" in err
    assert tree_hash(run_dir) == before
    code, _, err = run_cli(capsys, "resume", run_dir, "--set", "max_epochs=2", "--allow-data-change")
    assert code == 0, err
    change = json.loads((run_dir / "result.json").read_text())["data_changes"][0]
    assert change["step"] == 6 and "training samples: 96 -> 112" in change["changes"]
    code, _, err = run_cli(capsys, "resume", run_dir, "--set", "max_epochs=3")  # same data since: goes on
    assert code == 0, err
    assert json.loads((run_dir / "result.json").read_text())["data_changes"] == [change]  # still recorded


def test_in_memory_data_changes_are_noticed_too(tmp_path):
    Trainer(model(), cfg(tmp_path, max_epochs=1)).fit(data(seed=0))
    with pytest.raises(Exception, match="the training data's content changed"):
        Trainer(model(), cfg(tmp_path, max_epochs=2)).fit(data(seed=1), resume_from="latest")
    result = Trainer(model(), cfg(tmp_path, max_epochs=2)).fit(data(seed=1), resume_from="latest",
                                                               allow_data_change=True)
    assert result.summary["steps"] == 8 and result.extra["data_changes"]


# --------------------------------------------------------------------------- 7: preemption without checkpoints
def test_preemption_with_checkpointing_disabled_says_no_checkpoint(tmp_path):
    class Preempt(Callback):
        def on_batch_end(self, trainer):
            trainer.request_preemption("SIGTERM")

    trainer = Trainer(model(), cfg(tmp_path, checkpoint={"enabled": False}), callbacks=[Preempt()])
    with pytest.raises(Preempted) as e:
        trainer.fit(data())
    assert e.value.code == 1
    assert "no checkpoint: checkpointing is disabled" in e.value.message and "checkpoint saved" not in e.value.message


# --------------------------------------------------------------------------- 8: every number is checked
def numeric_fields(model_cls=TrainConfig, prefix=""):
    from pydantic import BaseModel
    for name, field in model_cls.model_fields.items():
        ann = field.annotation
        args = getattr(ann, "__args__", (ann,))
        sub = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if sub and name != "schedules":
            yield from numeric_fields(sub[0], f"{prefix}{name}.")
        elif any(a in (int, float) for a in args) and not any(a in (bool, str) for a in args):
            yield f"{prefix}{name}"  # (a field that also takes a name, int | str, takes text too)


FIELDS = list(numeric_fields())


def test_the_sweep_covers_the_fields_that_broke():
    for name in ("optimizer.lr", "optimizer.weight_decay", "seed", "grad.accumulate", "num_workers"):
        assert name in FIELDS


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1.0e+23", "-1.0e+23", "1e23", "text"])
@pytest.mark.parametrize("field", FIELDS)
def test_every_numeric_config_field_refuses_impossible_values(field, value):
    section, _, name = field.rpartition(".")
    base = ["data.path=d.npz"] if section == "data" else []  # the data spec is one branch of a union
    with pytest.raises(ConfigError, match=rf"field `{section}\.(DataSpec\.)?{name}`" if section else f"field `{name}`"):
        TrainConfig.from_dict({"max_epochs": 1}, base + [f"{field}={value}"])


@pytest.mark.parametrize("arg", ["hidden=-1", "hidden=1.0e+23", "dropout=.nan", "dropout=2", "depth=text"])
def test_out_of_range_recipe_args_are_config_errors(capsys, tmp_path, arg):
    code, _, err = run_cli(capsys, "demo", "digits", "--run-dir", tmp_path / "d", "--set", f"recipe_args.{arg}")
    assert code == 2, err
    assert f"recipe_args.{arg.split('=')[0]}" in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- 10: a foreign checkpoint
def test_a_foreign_checkpoint_in_the_run_is_skipped_with_a_warning(tmp_path):
    Trainer(model(), cfg(tmp_path, max_epochs=1)).fit(data())
    directory = tmp_path / "run" / "checkpoints"
    CheckpointManager(directory, keep_last=None).save(
        "mine", {"model": {"w": torch.zeros(2)}, "tensors": {}, "meta": {"note": "mine"}}, step=99, epoch=9)
    with pytest.warns(UserWarning, match=r"skipping invalid checkpoint\(s\): .*mine \(not a checkpoint of a trainforge run"):
        result = Trainer(model(), cfg(tmp_path, max_epochs=2)).fit(data(), resume_from="latest")
    assert result.summary["steps"] == 8
    from trainforge.snapshot import ResumeError
    with pytest.raises(ResumeError, match="not a checkpoint of a trainforge run"):
        Trainer(model(), cfg(tmp_path, max_epochs=3)).fit(data(), resume_from=directory / "mine")


# --------------------------------------------------------------------------- 11: no tracebacks for bad input
@pytest.mark.parametrize("command", ["train", "demo", "resume", "report", "checkpoints", "inspect", "sample"])
def test_every_command_with_a_run_dir_that_is_a_file(capsys, tmp_path, monkeypatch, command):
    monkeypatch.syspath_prepend(str(HERE))
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    config = tmp_path / "run.yaml"
    config.write_text("max_epochs: 1\nmodel: tiny_project:build_model\ndata: tiny_project:build_data\n")
    args = {"train": ["train", config, "--run-dir", afile], "demo": ["demo", "digits", "--run-dir", afile],
            "resume": ["resume", afile], "report": ["report", afile], "checkpoints": ["checkpoints", afile],
            "inspect": ["inspect", afile], "sample": ["sample", afile]}[command]
    code, _, err = run_cli(capsys, *args)
    assert code == 2, err
    assert "Traceback" not in err and str(afile) in err and len(err.strip().splitlines()) == 1, err
    assert afile.read_text() == "not a directory"


def test_a_config_that_is_not_utf8(capsys, tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("max_epochs: 1\nrun_dir: caf\xe9\n".encode("latin-1"))
    code, _, err = run_cli(capsys, "train", config)
    assert code == 2 and "is not UTF-8 text" in err and str(config) in err, err


def test_a_checkpoints_path_that_is_a_file(capsys, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").write_text("oops")
    config = tiny_config(tmp_path, "max_epochs: 1")
    for args in (["train", config], ["checkpoints", tmp_path / "run"]):
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and "is a file, not a directory of checkpoints" in err, err


@pytest.mark.parametrize("flag", ["--tokens=-5", "--tokens=1e30", "--temperature=nan", "--temperature=inf",
                                  "--temperature=-1", "--top-k=0", "--seed=-1", "--seed=99999999999"])
def test_out_of_range_sample_flags(capsys, tmp_path, flag):
    code, _, err = run_cli(capsys, "sample", tmp_path, flag)
    assert code == 2 and flag.split("=")[0] in err and len(err.strip().splitlines()) == 1, err


def test_nproc_out_of_range(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", tmp_path / "x.yaml", "--nproc", "0")
    assert code == 2 and "--nproc" in err and "out of range" in err


def test_an_unexpected_error_is_a_bug_report_with_error_log(capsys, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    import trainforge.run

    def broken(*a, **k):
        raise TypeError("something inside went wrong")

    monkeypatch.setattr(trainforge.run, "run_config", broken)
    (tmp_path / "run").mkdir()
    config = tmp_path / "run.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\nmax_epochs: 1\nmodel: tiny_project:build_model\n")
    code, _, err = run_cli(capsys, "train", config)
    assert code == 1 and "unexpected error: TypeError: something inside went wrong" in err
    assert "Traceback" not in err and f"{tmp_path / 'run' / 'error.log'}" in err and "--traceback" in err
    log = (tmp_path / "run" / "error.log").read_text()
    assert "Traceback" in log and "something inside went wrong" in log and "command: trainforge train" in log
    code, _, err = run_cli(capsys, "train", config, "--traceback")
    assert code == 1 and "Traceback" in err


# --------------------------------------------------------------------------- 12: durable state files
def test_config_result_and_lock_are_fsynced(tmp_path, monkeypatch):
    import trainforge.fileio as fileio
    synced = []
    original = fileio.write_synced
    monkeypatch.setattr(fileio, "write_synced", lambda path, data: (synced.append(Path(path).name), original(path, data)))
    real_fsync, fsynced = os.fsync, []
    monkeypatch.setattr(os, "fsync", lambda fd: (fsynced.append(fd), real_fsync(fd)))
    Trainer(model(), cfg(tmp_path, max_epochs=1)).fit(data())
    assert any(n.startswith(".tmp-config.yaml") for n in synced) and any(n.startswith(".tmp-result.json") for n in synced)
    assert fsynced  # the lock record and metrics.jsonl too


def test_torch_is_bounded_above_the_weights_only_bypass():
    text = (HERE.parent / "pyproject.toml").read_text()
    assert '"torch>=2.6,<2.14"' in text  # torch < 2.6: torch.load(weights_only=True) bypass, CVE-2025-32434


@pytest.mark.parametrize("value", [".inf", ".nan", "1.0e+23"])
def test_an_index_or_name_field_refuses_impossible_numbers(value):
    """loss.output / loss.target take a position (int) or a key (str): text is fine, inf is not."""
    with pytest.raises(ConfigError, match=r"field `loss\.output`"):
        TrainConfig.from_dict({"max_epochs": 1}, ["loss.name=mse", f"loss.output={value}"])
