"""Report: PNG files readable back, overlays, gate lines, error cases, in-progress runs."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg

from trainforge.config import ConfigError, TrainConfig, parse_condition
from trainforge.report import ReportError, build_figure, ema, load_run, parse_gate, smooth, write_html_summary, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GATE = {"eval/edge_compliance": "> 0.95", "eval/rule_compliance": "> 0.80"}


def fake_run(run_dir: Path, *, steps: int = 2000, epochs: int = 20, seed: int = 0, finished: bool = True,
             log_every: int = 10) -> Path:
    """A realistic run directory: noisy decaying loss, warmup-cosine lr, compliance rising per epoch."""
    rng = random.Random(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    per_epoch = steps // epochs
    warmup = steps // 10
    records, loss_steps, loss_values = [], [], []
    val_curves: dict[str, dict[str, list]] = {}
    t0 = 1_700_000_000.0
    for step in range(1, steps + 1):
        epoch = (step - 1) // per_epoch
        loss = 0.3 + 2.2 * math.exp(-step / (350 + 50 * seed)) + rng.gauss(0, 0.08)
        loss_steps.append(step)
        loss_values.append(loss)
        if step % log_every == 0:
            lr = 3e-4 * step / warmup if step < warmup else \
                3e-5 + 0.5 * (3e-4 - 3e-5) * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))
            records.append({"kind": "train", "step": step, "epoch": epoch, "time": t0 + step * 0.05,
                            "train/loss": loss, "lr": lr, "grad/norm": 0.4 + 2.5 * math.exp(-step / 300) + rng.random() * 0.3,
                            "grad/max": 0.1, "grad/min": -0.1, "throughput/samples_per_s": 1200 + rng.gauss(0, 40),
                            "throughput/batches_per_s": 19.0, "time/step": 0.05, "memory/rss_mb": 800 + step * 0.01,
                            "weight_version": step})
        if step % per_epoch == 0:
            e = step // per_epoch
            val = {"val/loss": 0.35 + 2.0 * math.exp(-step / 400) + rng.gauss(0, 0.02),
                   "val/accuracy": min(1.0, 0.3 + 0.7 * (1 - math.exp(-e / 5))),
                   "eval/edge_compliance": min(1.0, 0.5 + 0.5 * (1 - math.exp(-e / 4)) + rng.gauss(0, 0.01)),
                   "eval/rule_compliance": min(1.0, 0.1 + 0.85 * (1 - math.exp(-e / 6)) + rng.gauss(0, 0.01))}
            records.append({"kind": "val", "step": step, "epoch": e - 1, "time": t0 + step * 0.05, **val})
            records.append({"kind": "epoch", "step": step, "epoch": e - 1, "time": t0 + step * 0.05,
                            "train/epoch_loss": float(np.mean(loss_values[-per_epoch:])), "time/epoch": 5.0})
            for k, v in val.items():
                val_curves.setdefault(k, {"step": [], "value": []})
                val_curves[k]["step"].append(step)
                val_curves[k]["value"].append(v)
    with open(run_dir / "metrics.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    if finished:
        last = {k: c["value"][-1] for k, c in val_curves.items()}
        result = {"summary": {"train/loss": loss_values[-1], **last, "best": {"val/loss": min(val_curves["val/loss"]["value"])}},
                  "stopped_reason": "gate passed" if last["eval/edge_compliance"] > 0.95 else "max_epochs",
                  "final_checkpoint": str(run_dir / "checkpoints" / "final"),
                  "gate_passed": last["eval/edge_compliance"] > 0.95 and last["eval/rule_compliance"] > 0.8,
                  "gate": GATE,
                  "curves": {"train/loss": {"step": loss_steps, "value": loss_values}, **val_curves},
                  "config": {"run_dir": str(run_dir), "grad": {"clip_norm": 1.0}}}
        (run_dir / "result.json").write_text(json.dumps(result))
    return run_dir


def assert_png(path: Path, min_size: tuple[int, int] = (600, 300)) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = mpimg.imread(path)
    assert img.shape[0] >= min_size[1] and img.shape[1] >= min_size[0]
    assert img.std() > 0.01  # not a blank canvas


def gate_lines(fig) -> dict[str, float]:
    return {line.get_label(): float(line.get_ydata()[0]) for ax in fig.axes for line in ax.get_lines()
            if line.get_gid() == "gate"}


def test_report_png_for_finished_run(tmp_path):
    run = fake_run(tmp_path / "run_a")
    out = write_report([run])
    assert out == run / "report.png"
    assert_png(out, (1000, 1000))


def test_overlay_of_two_runs_and_custom_out(tmp_path):
    a, b = fake_run(tmp_path / "a", seed=0), fake_run(tmp_path / "b", seed=1, steps=1500)
    out = write_report([a, b], out=tmp_path / "cmp" / "both.png")
    assert_png(out)
    fig = build_figure([load_run(a), load_run(b)])
    loss_ax = next(ax for ax in fig.axes if ax.get_title(loc="left").startswith("Training loss"))
    colors = {line.get_color() for line in loss_ax.get_lines()}
    assert len(colors) == 2  # one colour per run
    legend_texts = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert any(t.startswith("a") for t in legend_texts) and any(t.startswith("b") for t in legend_texts)


def test_gate_lines_on_eval_panel(tmp_path):
    fig = build_figure([load_run(fake_run(tmp_path / "run"))])
    gates = gate_lines(fig)
    assert gates == {"gate eval/edge_compliance > 0.95": 0.95, "gate eval/rule_compliance > 0.8": 0.80}
    eval_ax = next(ax for ax in fig.axes if ax.get_title(loc="left").startswith("Evaluation"))
    assert len([line for line in eval_ax.get_lines() if line.get_gid() == "gate"]) == 2
    titles = [ax.get_title(loc="left") for ax in fig.axes if ax.get_visible()]
    for expected in ("Training loss", "Learning rate", "Loss per epoch", "Accuracy", "Gradient norm", "Throughput"):
        assert any(t.startswith(expected) for t in titles), (expected, titles)
    assert all(ax.get_xlabel() == "optimizer step" for ax in fig.axes if ax.get_visible())


def test_gate_keys_match_by_suffix_and_parse():
    assert parse_gate("> 0.95") == (">", 0.95)
    assert parse_gate(">=0.8") == (">=", 0.8)
    assert parse_gate("about half") is None


GATE_TEXTS = ["> 0.95", ">=0.8", "<= 1e-3", "< -2", " >  3 ", "0.5", "== 1", ">", "> x", "about half", "=> 1", ""]


@pytest.mark.parametrize("text", GATE_TEXTS)
def test_report_and_config_read_gates_by_one_grammar(text):
    """A gate the config refuses is one the report does not draw, and the other way round."""
    try:
        expected = parse_condition(text)
    except ValueError:
        expected = None
    assert parse_gate(text) == expected
    data = {"max_steps": 1, "gate": {"val/accuracy": text}}
    if expected is None:
        with pytest.raises(ConfigError, match="gate"):
            TrainConfig.from_dict(data)
    else:
        assert TrainConfig.from_dict(data).gate == {"val/accuracy": text}


def test_a_bare_number_is_not_a_gate():
    """The config's gate values are strings '<op> <number>'; a bare number has no operator."""
    assert parse_gate(0.5) is None
    with pytest.raises(ValueError):
        parse_condition(0.5)


def test_in_progress_run_reads_metrics_jsonl(tmp_path):
    run = fake_run(tmp_path / "live", finished=False)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "step": 20')  # the half-written line of a live run
    data = load_run(run)
    assert not data.finished
    steps, values = data.curves["train/loss"]
    assert steps[0] == 10 and len(steps) == 200  # every log step, from the JSONL
    assert_png(write_report([run]))


def test_later_record_for_a_step_wins_after_resume(tmp_path):
    run = tmp_path / "resumed"
    run.mkdir()
    lines = [{"kind": "train", "step": s, "epoch": 0, "time": 0.0, "train/loss": 5.0} for s in (1, 2, 3)]
    lines += [{"kind": "train", "step": s, "epoch": 0, "time": 1.0, "train/loss": 1.0} for s in (2, 3, 4)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    steps, values = load_run(run).curves["train/loss"]
    assert steps.tolist() == [1, 2, 3, 4] and values.tolist() == [5.0, 1.0, 1.0, 1.0]


def test_html_summary(tmp_path):
    run = fake_run(tmp_path / "run", steps=400, epochs=4)
    out = write_html_summary(run)
    text = out.read_text()
    assert out.name == "report.html" and "data:image/png;base64," in text and "eval/edge_compliance" in text
    assert "best · val/loss" in text  # nested summary sections are flattened into rows


def test_empty_run_draws_placeholder(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    assert_png(write_report([tmp_path]), (300, 200))


def test_ema_is_debiased_and_smooth():
    x = np.full(100, 2.0)
    assert np.allclose(ema(x), 2.0) and np.allclose(smooth(x), 2.0)
    noisy = 1 + np.random.default_rng(0).normal(0, 0.5, 4000)
    assert ema(noisy)[-1000:].std() < noisy.std() / 4
    assert smooth(noisy)[-1000:].std() < noisy.std() / 4
    with_gap = noisy.copy()
    with_gap[10:20] = np.nan
    assert np.isfinite(smooth(with_gap)).all()


def test_smoothing_does_not_lag_a_falling_curve():
    steps = np.arange(3000)
    loss = np.exp(-steps / 150)
    lagged, centred = ema(loss) / loss, smooth(loss) / loss
    assert lagged[300:1000].max() > 1.3  # a one-way EMA draws well above the data
    assert np.abs(centred[300:1000] - 1).max() < 0.1


@pytest.mark.parametrize("case", ["missing", "empty_dir", "corrupt", "bad_curve", "no_dirs"])
def test_errors_are_report_errors_naming_the_path(tmp_path, case):
    run = tmp_path / "run"
    if case != "missing":
        run.mkdir()
    if case == "corrupt":
        (run / "result.json").write_text('{"summary": {')
    if case == "bad_curve":
        (run / "result.json").write_text(json.dumps({"curves": {"train/loss": {"step": [1, 2], "value": [1.0]}}}))
    with pytest.raises(ReportError) as info:
        write_report([] if case == "no_dirs" else [run])
    assert isinstance(info.value, ValueError)
    if case in ("corrupt", "bad_curve"):
        assert "result.json" in str(info.value)
    elif case != "no_dirs":
        assert str(run) in str(info.value)


def test_overlay_legend_names_the_settings_that_differ(tmp_path):
    a, b = fake_run(tmp_path / "a", seed=0), fake_run(tmp_path / "b", seed=1)
    for path, lr in ((a, 0.03), (b, 0.1)):
        result = json.loads((path / "result.json").read_text())
        result["config"] = {**result["config"], "optimizer": {"name": "adamw", "lr": lr}, "seed": 0}
        (path / "result.json").write_text(json.dumps(result))
    fig = build_figure([load_run(a), load_run(b)])
    texts = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert texts[0].startswith("optimizer.lr=0.03 [a]") and texts[1].startswith("optimizer.lr=0.1 [b]")


def test_accuracy_axis_zooms_to_the_data_and_no_axis_has_an_offset_label(tmp_path):
    run = fake_run(tmp_path / "run")
    data = load_run(run)
    steps = data.curves["val/accuracy"][0]
    data.curves["val/accuracy"] = (steps, np.linspace(0.953, 0.957, len(steps)))
    fig = build_figure([data])
    fig.canvas.draw()
    acc = next(ax for ax in fig.axes if ax.get_title(loc="left").startswith("Accuracy"))
    low, high = acc.get_ylim()
    assert 0.9 < low < 0.953 and 0.957 < high < 0.97  # 0.953 vs 0.957 readable, not a 0-1 axis
    for ax in fig.axes:
        if ax.get_visible():
            assert ax.yaxis.get_offset_text().get_text() == "", ax.get_title(loc="left")
            assert ax.xaxis.get_offset_text().get_text() == "", ax.get_title(loc="left")
