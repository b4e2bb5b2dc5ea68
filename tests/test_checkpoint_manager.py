"""CheckpointManager: exact round trip, verification, safety, retention, replace, async, table."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import random
import threading
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from trainforge import checkpoint as ckpt
from trainforge.checkpoint import manager as ckpt_manager
from trainforge.checkpoint import (
    CheckpointError,
    CheckpointManager,
    format_checkpoint_table,
    load_checkpoint,
    select_retained,
)

DEAD_PID = 999_999_999  # above any pid_max: never a live process


class TinyGPT(nn.Module):
    def __init__(self, vocab: int = 11, dim: int = 8):
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.block = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied: one storage under two names

    def forward(self, idx):
        return self.lm_head(self.norm(torch.relu(self.block(self.wte(idx)))))


def trained(steps: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    model = TinyGPT()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(steps):
        idx = torch.randint(0, 11, (4, 5))
        loss = nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt


def make_payload(model, opt, **extra_meta):
    return {
        "model": model.state_dict(),
        "tensors": {
            "optimizer": opt.state_dict(),
            "nested": {"a": [torch.arange(6).view(2, 3), (torch.tensor(2.5), 3, "s", None, True)],
                       "od": OrderedDict(x=torch.zeros(2, dtype=torch.bfloat16))},
            "rng": {"python": random.getstate(), "torch": torch.get_rng_state()},
        },
        "meta": {"step": 3, "history": {"train/loss": [2.0, 1.5, 1.25]}, "config": {"lr": 0.01}, **extra_meta},
    }


def assert_same(a, b, where="payload"):
    """Deep equality: same container types, torch.equal tensors of the same dtype."""
    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def rewrite_manifest_entry(ckpt_dir, fname):
    """Make the manifest agree with a tampered file, so only later checks can catch it."""
    data = (ckpt_dir / fname).read_bytes()
    m = json.loads((ckpt_dir / "MANIFEST.json").read_text())
    m["files"][fname] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (ckpt_dir / "MANIFEST.json").write_text(json.dumps(m))


# --------------------------------------------------------------------------- round trip
def test_exact_round_trip_with_tied_weights_and_adamw(tmp_path):
    model, opt = trained()
    payload = make_payload(model, opt)
    expected = copy.deepcopy(payload)
    mgr = CheckpointManager(tmp_path, keep_last=2)
    path = mgr.save("step-3", payload, step=3, epoch=0, metrics={"val/loss": torch.tensor(0.75)})
    assert path == tmp_path / "step-3"
    assert sorted(p.name for p in path.iterdir()) == ["MANIFEST.json", "model.safetensors", "state.json", "state.pt"]

    loaded = mgr.load("step-3")
    assert set(loaded) == {"model", "tensors", "meta"}
    assert_same(expected["model"], loaded["model"], "model")
    assert_same(expected["tensors"], loaded["tensors"], "tensors")
    assert loaded["meta"] == expected["meta"]
    # The tie comes back as one tensor, and the weights file holds it once.
    assert loaded["model"]["lm_head.weight"] is loaded["model"]["wte.weight"]
    from safetensors import safe_open
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()

    # Everything restores into fresh objects: model (strict), optimizer, python RNG.
    fresh, fresh_opt = trained(steps=0, seed=1)
    fresh.load_state_dict(loaded["model"], strict=True)
    fresh_opt.load_state_dict(loaded["tensors"]["optimizer"])
    assert fresh.lm_head.weight is fresh.wte.weight
    random.setstate(loaded["tensors"]["rng"]["python"])
    assert_same(fresh_opt.state_dict(), expected["tensors"]["optimizer"], "optimizer")

    info = mgr.list()[0]
    assert (info.step, info.epoch, info.metrics, info.valid) == (3, 0, {"val/loss": 0.75}, True)
    assert_same(load_checkpoint(path)["model"], loaded["model"])
    assert loaded["model"]._metadata == expected["model"]._metadata


def test_overlapping_views_round_trip_by_value(tmp_path):
    base = torch.arange(10.0)
    model = {"a": base[:6], "b": base[4:], "t": base.view(2, 5).t(), "empty": torch.empty(0), "e2": torch.empty(0)}
    mgr = CheckpointManager(tmp_path)
    mgr.save("x", {"model": model, "tensors": {}, "meta": {}}, step=0, epoch=0)
    loaded = mgr.load("x")["model"]
    for k, v in model.items():
        assert torch.equal(loaded[k], v), k


def test_bad_inputs_are_refused_at_the_door(tmp_path):
    mgr = CheckpointManager(tmp_path)
    ok = {"model": {}, "tensors": {}, "meta": {}}
    with pytest.raises(CheckpointError, match="invalid checkpoint name"):
        mgr.save("../escape", ok, step=0, epoch=0)
    with pytest.raises(CheckpointError, match=r"\['rng'\]\['numpy'\] is a numpy.ndarray"):
        mgr.save("a", {**ok, "tensors": {"rng": {"numpy": np.zeros(3)}}}, step=0, epoch=0)
    with pytest.raises(CheckpointError, match=r"payload\['meta'\]\['x'\] is a Tensor"):
        mgr.save("a", {**ok, "meta": {"x": torch.ones(1)}}, step=0, epoch=0)
    with pytest.raises(ValueError, match="needs monitor"):
        CheckpointManager(tmp_path, keep_best=1)
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- verification
def corrupt(path, how):
    if how == "truncated":
        f = path / "model.safetensors"
        f.write_bytes(f.read_bytes()[:-7])
        return "model.safetensors"
    if how == "flipped":
        f = path / "state.pt"
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
        return "state.pt"
    (path / "MANIFEST.json").unlink()
    return "MANIFEST.json"


@pytest.mark.parametrize("how", ["truncated", "flipped", "no_manifest"])
def test_corruption_is_detected_and_latest_valid_falls_back(tmp_path, how):
    model, opt = trained(steps=1)
    mgr = CheckpointManager(tmp_path, keep_last=5)
    for step in (1, 2, 3):
        mgr.save(f"step-{step}", make_payload(model, opt), step=step, epoch=0)
    bad = tmp_path / "step-3"
    fname = corrupt(bad, how)

    for action in (lambda: mgr.verify(bad), lambda: mgr.load("step-3"), lambda: load_checkpoint(bad)):
        with pytest.raises(CheckpointError) as err:
            action()
        assert str(bad) in str(err.value) and fname in str(err.value)

    with pytest.warns(UserWarning, match=r"step-3.*" + fname.replace(".", r"\.")) as rec:
        latest = mgr.latest_valid()
    assert latest.name == "step-2"
    assert "falling back" in str(rec[0].message)
    infos = {i.name: i for i in mgr.list()}
    assert not infos["step-3"].valid and fname in infos["step-3"].reason
    assert infos["step-3"].step == 3  # even without a manifest, state.json places it in order
    assert infos["step-2"].valid


def test_latest_valid_is_none_and_silent_without_checkpoints(tmp_path, recwarn):
    assert CheckpointManager(tmp_path / "nothing").latest_valid() is None
    assert not recwarn.list


class Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, writer):
    mgr = CheckpointManager(tmp_path / "ckpts")
    path = mgr.save("step-1", {"model": {"w": torch.ones(2)}, "tensors": {}, "meta": {}}, step=1, epoch=0)
    pwned = tmp_path / "pwned"
    evil = {"optimizer": Evil(pwned)}
    if writer == "torch.save":
        torch.save(evil, path / "state.pt")
    else:
        with open(path / "state.pt", "wb") as f:
            pickle.dump(evil, f)
    rewrite_manifest_entry(path, "state.pt")
    mgr.verify(path)  # the manifest agrees: only the pickle check stands in the way

    with pytest.raises(CheckpointError, match="refusing to unpickle state.pt.*not a trainforge checkpoint or it was "
                                              "tampered") as err:
        mgr.load("step-1")
    assert str(path) in str(err.value)
    assert not pwned.exists()
    if writer == "pickle.dump":  # control: the payload is live, so the refusal above is what saved us
        with open(path / "state.pt", "rb") as f:
            pickle.load(f)
        assert pwned.exists()


# --------------------------------------------------------------------------- retention
def test_retention_keeps_last_best_and_pinned(tmp_path):
    losses = [None, 5.0, 3.5, 1.0, 3.0, 0.5, 2.8, 2.7, 2.6, 2.5]  # step 1 has no metric: it doesn't compete
    mgr = CheckpointManager(tmp_path, keep_last=3, keep_best=2, monitor="val/loss", mode="min")
    payload = {"model": {"w": torch.zeros(4)}, "tensors": {}, "meta": {}}
    for step, loss in enumerate(losses, start=1):
        mgr.save(f"step-{step:02d}", payload, step=step, epoch=0,
                 metrics={} if loss is None else {"val/loss": loss})
        if step == 2:
            mgr.pin("step-02")  # pinned after its save: recorded in pins.json
    infos = mgr.list()
    assert [i.name for i in infos] == ["step-02", "step-04", "step-06", "step-08", "step-09", "step-10"]
    assert [i.name for i in infos if i.pinned] == ["step-02"]
    assert all(i.valid for i in infos)  # pinning did not disturb any manifest
    assert {i.name: i.monitored for i in infos}["step-06"] == 0.5


def test_select_retained_modes_and_save_time_pins(tmp_path):
    def info(name, step, value=None, pinned=False):
        return ckpt.CheckpointInfo(name, tmp_path / name, step, 0, {} if value is None else {"acc": value},
                                   value, 0, pinned, True, None, float(step))
    infos = [info("a", 1, 0.9), info("b", 2, 0.1, pinned=True), info("c", 3, float("nan")), info("d", 4, 0.5),
             info("e", 5)]
    assert select_retained(infos, keep_last=1, keep_best=1, monitor="acc", mode="max") == {"a", "b", "e"}
    assert select_retained(infos, keep_last=0, keep_best=2, monitor="acc", mode="min") == {"b", "d"}
    assert select_retained(infos, keep_last=None, keep_best=0, monitor=None) == {"a", "b", "c", "d", "e"}
    assert select_retained(infos, keep_last=0, keep_best=0, monitor=None, protect=("c",)) == {"b", "c"}

    mgr = CheckpointManager(tmp_path, keep_last=1)
    payload = {"model": {}, "tensors": {}, "meta": {}}
    mgr.save("keep", payload, step=1, epoch=0, pinned=True)
    for step in (2, 3):
        mgr.save(f"s{step}", payload, step=step, epoch=0)
    assert [i.name for i in mgr.list()] == ["keep", "s3"]


# --------------------------------------------------------------------------- replace and leftovers
def test_saving_the_same_name_again_replaces_it(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=3)
    mgr.save("last", {"model": {"w": torch.zeros(3)}, "tensors": {}, "meta": {"v": 1}}, step=1, epoch=0)
    # as after a kill between the rename and the end of the run: resume saves the same name again
    mgr.save("last", {"model": {"w": torch.ones(3)}, "tensors": {}, "meta": {"v": 2}}, step=1, epoch=0)
    loaded = mgr.load("last")
    assert torch.equal(loaded["model"]["w"], torch.ones(3)) and loaded["meta"] == {"v": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["last"]


def test_leftovers_are_ignored_then_cleaned_and_an_interrupted_replace_is_undone(tmp_path):
    mgr = CheckpointManager(tmp_path)
    payload = {"model": {"w": torch.ones(2)}, "tensors": {}, "meta": {}}
    mgr.save("a", payload, step=1, epoch=0)
    os.replace(tmp_path / "a", tmp_path / f".old-a-{DEAD_PID}")  # killed between the two renames
    for stray in (f".tmp-step-5-{DEAD_PID}", f".tmp-b-{os.getpid()}", f".trash-c-{DEAD_PID}", ".tmp-live-1"):
        (tmp_path / stray).mkdir()
        (tmp_path / stray / "model.safetensors").write_bytes(b"partial")
    assert mgr.list() == []

    mgr.save("b", payload, step=2, epoch=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-live-1", "a", "b"]  # pid 1 is alive: not ours
    assert [i.name for i in mgr.list()] == ["a", "b"] and all(i.valid for i in mgr.list())


# --------------------------------------------------------------------------- async
def gate_writer(monkeypatch):
    """Hold the background writer until the test opens the gate."""
    gate, started = threading.Event(), threading.Event()
    real = ckpt_manager.write_files

    def slow(tmp, job):
        started.set()
        assert gate.wait(10), "test never opened the gate"
        real(tmp, job)

    monkeypatch.setattr(ckpt_manager, "write_files", slow)
    return gate, started


def test_async_save_returns_early_and_writes_the_state_at_save_time(tmp_path, monkeypatch):
    gate, started = gate_writer(monkeypatch)
    model, opt = trained(steps=2)
    payload = make_payload(model, opt)
    expected = copy.deepcopy(payload)
    mgr = CheckpointManager(tmp_path, async_save=True)

    path = mgr.save("step-2", payload, step=2, epoch=0)
    assert started.wait(10)
    assert not path.exists()  # save() returned while the writer is still held

    # Training goes on and updates everything in place before the writer runs.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    for state in opt.state.values():
        state["exp_avg"].mul_(-3)
    payload["tensors"]["nested"]["a"][0].zero_()
    payload["meta"]["history"]["train/loss"].append(9.9)

    gate.set()
    mgr.wait()
    loaded = mgr.load("step-2")
    assert_same(expected["model"], loaded["model"], "model")
    assert_same(expected["tensors"], loaded["tensors"], "tensors")
    assert loaded["meta"] == expected["meta"]
    assert loaded["model"]["lm_head.weight"] is loaded["model"]["wte.weight"]

    # The host buffers are reused by the next save: it must hold the new state, the old one intact.
    mutated = copy.deepcopy(payload)
    mgr.save("step-3", payload, step=3, epoch=0)
    mgr.close()
    assert_same(mutated["tensors"], mgr.load("step-3")["tensors"], "second save")
    assert_same(expected["tensors"], mgr.load("step-2")["tensors"], "first save after reuse")


def test_async_error_surfaces_at_wait_and_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(tmp, job):
        (tmp / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_manager, "write_files", broken)
    mgr = CheckpointManager(tmp_path, async_save=True)
    mgr.save("step-1", {"model": {}, "tensors": {}, "meta": {}}, step=1, epoch=0)
    with pytest.raises(CheckpointError, match=r"step-1: no space left on device: [0-9.]+ MB needed in .*no valid checkpoint yet"):
        mgr.wait()
    mgr.wait()  # the error is reported once
    assert list(tmp_path.iterdir()) == []


def test_next_save_waits_for_the_pending_one(tmp_path, monkeypatch):
    gate, started = gate_writer(monkeypatch)
    mgr = CheckpointManager(tmp_path, keep_last=5, async_save=True)
    payload = {"model": {"w": torch.ones(2)}, "tensors": {}, "meta": {}}
    mgr.save("s1", payload, step=1, epoch=0)
    assert started.wait(10)
    threading.Timer(0.2, gate.set).start()
    mgr.save("s2", payload, step=2, epoch=0)  # blocks until s1 is written
    assert (tmp_path / "s1").is_dir()
    mgr.close()
    assert [i.name for i in mgr.list()] == ["s1", "s2"]


# --------------------------------------------------------------------------- table
def test_format_checkpoint_table(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=5, monitor="val/loss")
    payload = {"model": {"w": torch.zeros(1000)}, "tensors": {}, "meta": {}}
    mgr.save("step-10", payload, step=10, epoch=1, metrics={"val/loss": 0.25}, pinned=True)
    mgr.save("step-20", payload, step=20, epoch=2, metrics={"val/loss": 0.125})
    (tmp_path / "step-20" / "MANIFEST.json").unlink()
    table = format_checkpoint_table(mgr.list())
    lines = table.splitlines()
    for col in ("name", "step", "epoch", "monitored", "size", "pinned", "valid"):
        assert col in lines[0]
    assert lines[1].split()[:4] == ["step-10", "10", "1", "0.25"]
    assert "KiB" in lines[1] and lines[1].split()[-2:] == ["yes", "yes"]
    assert lines[2].split()[:4] == ["step-20", "20", "2", "0.125"]
    assert lines[2].split()[6:8] == ["no", "NO"] and "MANIFEST.json is missing" in lines[2]
    assert format_checkpoint_table([]) == "no checkpoints"
