"""Plots (PNG) and a small HTML summary of one or more run directories.

A run directory is read through ``result.json`` (curves, summary, gate) when the run has
finished, and through ``metrics.jsonl`` while it is still running. Both are merged: the
JSONL log supplies the curves result.json leaves out (lr, gradient norm, throughput), and
result.json's curves win where both have one, since they are denser (loss at every step).

The figure is drawn on a bare ``Figure`` with the Agg canvas, never through pyplot, so a
report neither needs a display nor leaks figures in a long-lived process.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from .callbacks.trackers import flatten

from .config import parse_condition
from .fileio import atomic_write_bytes, atomic_write_text

__all__ = ["ReportError", "RunData", "load_run", "build_figure", "write_report", "write_html_summary"]

# Fields of a metrics.jsonl record that are coordinates, not metrics.
RECORD_KEYS = frozenset({"kind", "step", "epoch", "time"})


class ReportError(ValueError):
    """A run directory that cannot be reported on; the message names the directory or file."""


@dataclass
class RunData:
    """Everything the report needs from one run directory."""

    name: str
    path: Path
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)
    gate_passed: bool | None = None
    stopped_reason: str | None = None
    gate_failure_reason: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    milestones: dict[str, Any] = field(default_factory=dict)  # metric -> {threshold, step, ...} or None

    @property
    def finished(self) -> bool:
        return self.stopped_reason is not None


# ----------------------------------------------------------------------------------------------
# Reading a run directory
# ----------------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A plottable float, or None. JSON null stands for a NaN the writer could not encode."""
    if value is None:
        return math.nan
    if isinstance(value, bool):  # a record flag (mid_epoch), not a metric
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) or math.isnan(value) else math.nan
    return None


def _read_jsonl(path: Path) -> dict[str, dict[int, float]]:
    """metric -> {step: value}. A later record for a step wins: after a resume or a rollback the
    log holds the abandoned steps too, and the run that continued is the one to draw."""
    series: dict[str, dict[int, float]] = {}
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (ValueError, KeyError, TypeError):
            # The last line of a live or killed run may be half written; anything else is worth a word.
            if lineno != len(lines):
                warnings.warn(f"{path}:{lineno}: skipped a line that is not a metrics record", stacklevel=3)
            continue
        for key, value in record.items():
            number = None if key in RECORD_KEYS else _number(value)
            if number is not None:
                series.setdefault(key, {})[step] = number
    return series


def _read_result(path: Path) -> dict[str, Any]:
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path} is not valid JSON ({exc}); re-run the report once the run has "
                          f"rewritten it, or delete it to report from metrics.jsonl") from exc
    if not isinstance(result, dict) or not isinstance(result.get("curves", {}), dict):
        raise ReportError(f"{path} is not a trainforge result (expected an object with 'curves')")
    return result


def _curves_from_result(result: dict[str, Any], path: Path) -> dict[str, dict[int, float]]:
    series: dict[str, dict[int, float]] = {}
    for name, curve in result.get("curves", {}).items():
        try:
            steps, values = curve["step"], curve["value"]
            pairs = {int(s): _number(v) for s, v in zip(steps, values, strict=True)}
        except (KeyError, TypeError, ValueError) as exc:
            raise ReportError(f"{path}: curve {name!r} must be {{'step': [...], 'value': [...]}} "
                              f"of equal length ({exc})") from exc
        series[name] = {s: v for s, v in pairs.items() if v is not None}
    return series


def load_run(run_dir: Path | str) -> RunData:
    """Read a run directory into a :class:`RunData`; raise ReportError when there is nothing to read."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"run directory {run_dir} does not exist")
    result_path, jsonl_path = run_dir / "result.json", run_dir / "metrics.jsonl"
    if not result_path.is_file() and not jsonl_path.is_file():
        raise ReportError(f"{run_dir} has neither result.json nor metrics.jsonl: is it a trainforge run directory?")

    series = _read_jsonl(jsonl_path) if jsonl_path.is_file() else {}
    result = _read_result(result_path) if result_path.is_file() else {}
    series.update(_curves_from_result(result, result_path))
    curves = {}
    for name, points in series.items():
        steps = np.array(sorted(points), dtype=np.int64)
        curves[name] = (steps, np.array([points[s] for s in steps], dtype=np.float64))
    return RunData(
        name=run_dir.resolve().name,
        path=run_dir,
        curves=curves,
        summary=result.get("summary") or {},
        gate=result.get("gate") or {},
        gate_passed=result.get("gate_passed"),
        stopped_reason=result.get("stopped_reason"),
        gate_failure_reason=result.get("gate_failure_reason"),
        config=result.get("config") or {},
        milestones=result.get("milestones") or {},
    )


# ----------------------------------------------------------------------------------------------
# Panels: which metrics share an axes
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Panel:
    title: str
    ylabel: str
    match: Callable[[str], bool]
    bounded: bool = False  # a fraction in [0, 1]: fix the y range so gate lines sit in context
    autolog: bool = False  # switch to a log axis when the values span decades
    smoothed: bool = False  # noisy per-step series: raw faint, EMA bold


def _is_eval(name: str) -> bool:
    return name.startswith(("val/", "eval/", "test/"))


_SCORE = re.compile(r"acc|f1|precision|recall|auc", re.IGNORECASE)

# Order is reading order; a metric lands on the first panel that matches it.
PANELS: tuple[Panel, ...] = (
    Panel("Training loss (per step)", "loss", lambda n: n == "train/loss", autolog=True, smoothed=True),
    Panel("Learning rate", "learning rate", lambda n: n == "lr" or n.startswith("lr/")),
    Panel("Loss per epoch / evaluation", "loss",
          lambda n: n.endswith("loss") and (_is_eval(n) or n == "train/epoch_loss"), autolog=True),
    Panel("Accuracy / F1", "score", lambda n: _is_eval(n) and bool(_SCORE.search(n)), bounded=True),
    Panel("Evaluation metrics (eval/*)", "value", lambda n: n.startswith("eval/"), bounded=True),
    Panel("Other validation metrics", "value", _is_eval),
    Panel("Gradient norm (global L2)", "norm", lambda n: n == "grad/norm", autolog=True, smoothed=True),
    Panel("Throughput", "samples / s", lambda n: n == "throughput/samples_per_s", smoothed=True),
    Panel("Throughput (tokens)", "tokens / s", lambda n: n == "throughput/tokens_per_s", smoothed=True),
    Panel("Process memory", "MB", lambda n: n.startswith("memory/")),
)

def parse_gate(spec: Any) -> tuple[str, float] | None:
    """'> 0.95' -> ('>', 0.95), by the config's grammar (``config.parse_condition``); None for
    anything that grammar refuses (a run's gate was validated by it, so that is a damaged file)."""
    try:
        return parse_condition(spec)
    except ValueError:
        return None


def _gate_metric(gate_key: str, names: list[str]) -> str | None:
    """The plotted metric a gate key refers to: exact, or by suffix ('edge_compliance')."""
    if gate_key in names:
        return gate_key
    return next((n for n in names if n.endswith("/" + gate_key)), None)


# ----------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------

RUN_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
LINESTYLES = ("-", "--", ":", "-.")
MAX_RAW_POINTS = 20_000  # beyond this the faint raw curve is strided: it is texture, not data


def _default_span(n: int) -> float:
    # Grows with the curve's length, so a 100-step and a 100k-step run both read well, no knob.
    return min(max(n / 30.0, 5.0), 500.0)


def ema(values: np.ndarray, span: float | None = None) -> np.ndarray:
    """Debiased exponential moving average (TensorBoard's smoothing), NaN-tolerant."""
    span = span if span is not None else _default_span(len(values))
    alpha = 2.0 / (span + 1.0)
    out = np.empty(len(values), dtype=np.float64)
    acc = weight = 0.0
    for i, v in enumerate(values):
        if math.isfinite(v):
            acc = (1 - alpha) * acc + alpha * v
            weight = (1 - alpha) * weight + alpha
        out[i] = acc / weight if weight > 0 else math.nan
    return out


def smooth(values: np.ndarray, span: float | None = None) -> np.ndarray:
    """Zero-phase EMA: forward, then backward over the result.

    A one-way EMA lags the data by about span/2 steps, which on a fast-falling loss draws the
    smoothed curve visibly above every raw point; run both ways, the lags cancel."""
    values = np.asarray(values, dtype=np.float64)
    span = (span if span is not None else _default_span(len(values))) / 2  # two passes: half each
    return ema(ema(values, span)[::-1], span)[::-1]


def _panel_metrics(panel: Panel, names: list[str], taken: set[str]) -> list[str]:
    found = [n for n in names if n not in taken and panel.match(n)]
    taken.update(found)
    return found


def _plot_metric(ax: Axes, run: RunData, metric: str, color: str, style: str, label: str, smoothed: bool) -> None:
    steps, values = run.curves[metric]
    if smoothed and len(steps) >= 10:
        stride = max(1, len(steps) // MAX_RAW_POINTS)
        ax.plot(steps[::stride], values[::stride], color=color, alpha=0.22, linewidth=0.7)
        ax.plot(steps, smooth(values), color=color, linewidth=2.0, linestyle=style, label=label)
        return
    # A marker per evaluation shows where they were taken; per-step series stay plain lines.
    marked = (_is_eval(metric) or metric.startswith("train/epoch")) and len(steps) <= 60
    ax.plot(steps, values, color=color, linestyle=style, linewidth=1.6, label=label,
            marker="o" if marked else None, markersize=3.5)


# Each tick says its own value: no offset or multiplier label ("+8e2", "x10^-4") above the axis.
TICK_FORMAT = FuncFormatter(lambda value, _: f"{value:.4g}")

# Reference lines are grey and named in the panel legend rather than by text on the plot:
# a label written at the threshold sits exactly where the curves cross it.
REF_COLOR = "0.45"
REF_DASHES = ((0, (6, 3)), (0, (2, 2)), (0, (8, 2, 2, 2)))


def _draw_gates(ax: Axes, runs: list[RunData], metrics: list[str]) -> list[Line2D]:
    lines: list[Line2D] = []
    drawn: set[tuple[str, float]] = set()
    for run in runs:
        for key, spec in run.gate.items():
            metric, parsed = _gate_metric(key, metrics), parse_gate(spec)
            if metric is None or parsed is None or (metric, parsed[1]) in drawn:
                continue
            drawn.add((metric, parsed[1]))
            op, threshold = parsed
            lines.append(ax.axhline(threshold, color=REF_COLOR, linewidth=1.4, zorder=1, gid="gate",
                                    linestyle=REF_DASHES[len(lines) % len(REF_DASHES)],
                                    label=f"gate {metric} {op} {threshold:g}"))
    return lines


def _draw_clip(ax: Axes, runs: list[RunData]) -> list[Line2D]:
    """The clipping threshold on the gradient-norm panel: shows how often clipping bit."""
    clips = {(run.config.get("grad") or {}).get("clip_norm") for run in runs} - {None}
    return [ax.axhline(clip, color=REF_COLOR, linestyle=REF_DASHES[0], linewidth=1.4, zorder=1, gid="clip",
                       label=f"clip_norm = {clip:g}")
            for clip in sorted(c for c in clips if isinstance(c, (int, float)))]


def _draw_milestones(ax: Axes, runs: list[RunData], metrics: list[str]) -> list[Line2D]:
    """A run's milestones on the panel of their metric: a dotted vertical line in the run's colour
    at the step it was reached, and a marker at (step, threshold)."""
    lines: list[Line2D] = []
    for ri, run in enumerate(runs):
        color = RUN_COLORS[ri % len(RUN_COLORS)]
        for metric, hit in run.milestones.items():
            if metric not in metrics or not isinstance(hit, dict) or "step" not in hit:
                continue
            step, threshold = hit["step"], hit.get("threshold")
            label = f"{run.name}: {metric} {hit.get('op', '>=')} {threshold:g} at step {step:,}" \
                if isinstance(threshold, (int, float)) else f"{run.name}: {metric} at step {step:,}"
            ax.axvline(step, color=color, linestyle=":", linewidth=1.6, zorder=1, gid="milestone")
            if isinstance(threshold, (int, float)):
                ax.plot([step], [threshold], marker="*", markersize=11, color=color, zorder=4, gid="milestone")
            lines.append(Line2D([], [], color=color, linestyle=":", marker="*", label=label))
    return lines


def _finish_axes(ax: Axes, panel: Panel, runs: list[RunData], metrics: list[str], xmax: int,
                 refs: list[Line2D], log_steps: bool = False) -> None:
    ax.set_title(panel.title, fontsize=12, loc="left")
    ax.set_xlabel("optimizer step" + (" (log scale)" if log_steps else ""))
    ax.set_ylabel(metrics[0] if len(metrics) == 1 else panel.ylabel)
    if log_steps:
        ax.set_xscale("log")
        ax.set_xlim(1, max(xmax, 10))
    else:
        ax.set_xlim(0, max(xmax, 1))
    ax.grid(True, alpha=0.3)
    values = np.concatenate([r.curves[m][1] for r in runs for m in metrics if m in r.curves])
    values = values[np.isfinite(values)]
    ax.xaxis.set_major_formatter(TICK_FORMAT)
    if panel.bounded and values.size and values.min() >= 0 and values.max() <= 1:
        # Zoom to the data and the gate lines: 0.953 vs 0.957 must be told apart, not squashed at the top.
        levels = np.concatenate([values, [float(line.get_ydata()[0]) for line in refs if line.get_gid() == "gate"]])
        low, high = float(levels.min()), float(levels.max())
        pad = max((high - low) * 0.08, 0.004)
        ax.set_ylim(max(low - pad, -0.02), min(high + pad, 1.02))
        ax.yaxis.set_major_formatter(TICK_FORMAT)
    elif panel.autolog and values.size and values.min() > 0 and _spans_decades(values):
        ax.set_yscale("log")
    else:
        ax.yaxis.set_major_formatter(TICK_FORMAT)
    # Inside a panel, line style tells metrics apart; colour tells runs apart (figure legend).
    handles = [Line2D([], [], color="0.1", linestyle=LINESTYLES[i % len(LINESTYLES)], label=m)
               for i, m in enumerate(metrics)] if len(metrics) > 1 else []
    if handles or refs:
        ax.legend(handles=handles + refs, fontsize=8.5, loc="best", framealpha=0.9)


def _spans_decades(values: np.ndarray) -> bool:
    # Percentiles, not min/max: one noisy dip must not turn a readable linear axis into a log one.
    low, high = np.percentile(values, [2, 98])
    return low > 0 and high / low > 30


# Settings that tell nothing about a run's outcome: never used to name a run in a legend.
_NOT_SETTINGS = ("run_dir", "log.", "checkpoint.", "device", "num_workers", "compile", "validation.max_batches")


def differing_settings(runs: list[RunData], limit: int = 3) -> list[str]:
    """Per run, the settings that differ between the runs (``optimizer.lr=0.03, seed=1``); empty
    strings when the configs agree (or only one run is drawn)."""
    if len(runs) < 2:
        return [""] * len(runs)
    flat = [flatten(r.config) for r in runs]
    keys = sorted(set().union(*flat))
    differ = [k for k in keys if not k.startswith(_NOT_SETTINGS)
              and len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat}) > 1]
    more = f" (+{len(differ) - limit} more)" if len(differ) > limit else ""
    return [", ".join(f"{k}={_fmt(f.get(k))}" for k in differ[:limit]) + (more if differ else "") for f in flat]


def _run_label(run: RunData, settings: str = "") -> str:
    name = f"{settings} [{run.name}]" if settings else run.name
    if run.gate_passed is True:
        return f"{name} (gate passed)"
    if run.gate_passed is False:
        return f"{name} (gate failed)"
    return name if run.finished else f"{name} (running)"


def _last_step(run: RunData) -> int:
    return max((int(steps[-1]) for steps, _ in run.curves.values() if len(steps)), default=0)


def wants_log_steps(runs: list[RunData]) -> bool:
    """Runs whose lengths differ tenfold or more (a baseline and its accelerated version): only a
    log-scale step axis shows both."""
    ends = [e for e in map(_last_step, runs) if e > 0]
    return len(ends) > 1 and max(ends) / min(ends) >= 10


def build_figure(runs: list[RunData], log_steps: bool | None = None) -> Figure:
    """One panel per metric family present in any run, runs overlaid one colour each.
    ``log_steps``: a log-scale step axis (None: when the runs' lengths differ tenfold or more).
    Milestones recorded in result.json are marked on their metric's panel."""
    if log_steps is None:
        log_steps = wants_log_steps(runs)
    names = sorted({m for r in runs for m in r.curves}, key=lambda n: (n != "train/loss", n))
    taken: set[str] = set()
    panels = [(p, ms) for p in PANELS if (ms := _panel_metrics(p, names, taken))]
    ncols = 2 if len(panels) > 1 else 1
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig = Figure(figsize=(7.0 * ncols, 3.4 * nrows + 0.8), layout="constrained", dpi=100)
    FigureCanvasAgg(fig)
    if not panels:
        fig.text(0.5, 0.5, "no metrics recorded yet", ha="center", va="center", fontsize=14)
        return fig
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    xmax = max((int(s[-1]) for r in runs for s, _ in r.curves.values() if len(s)), default=1)
    for ax, (panel, metrics) in zip(axes, panels):
        for ri, run in enumerate(runs):
            color = RUN_COLORS[ri % len(RUN_COLORS)]
            for mi, metric in enumerate(metrics):
                if metric in run.curves:
                    style = LINESTYLES[mi % len(LINESTYLES)]
                    _plot_metric(ax, run, metric, color, style, f"{_run_label(run)}: {metric}", panel.smoothed)
        refs = _draw_gates(ax, runs, metrics) + (_draw_clip(ax, runs) if metrics == ["grad/norm"] else [])
        refs += _draw_milestones(ax, runs, metrics)
        _finish_axes(ax, panel, runs, metrics, xmax, refs, log_steps)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    _add_titles(fig, runs)
    return fig


def _add_titles(fig: Figure, runs: list[RunData]) -> None:
    if len(runs) == 1:
        run = runs[0]
        status = f"stopped: {run.stopped_reason}" if run.finished else "in progress"
        if run.gate_passed is not None and "gate" not in status:
            status += ", gate passed" if run.gate_passed else ", gate failed"
        fig.suptitle(f"{run.name}  —  {status}", fontsize=14)
        return
    # Several runs: the legend of run colours is the header (a suptitle would collide with it).
    labels = differing_settings(runs)
    handles = [Line2D([], [], color=RUN_COLORS[i % len(RUN_COLORS)], linewidth=2.5, label=_run_label(r, labels[i]))
               for i, r in enumerate(runs)]
    fig.legend(handles=handles, loc="outside upper center", ncols=min(len(runs), 4), fontsize=10, frameon=False)


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def write_report(run_dirs: list[Path | str], out: Path | str | None = None, *, log_steps: bool | None = None) -> Path:
    """Draw ``report.png`` for one or more run directories; return its path. ``log_steps``: see
    :func:`build_figure`.

    ``out`` defaults to ``report.png`` in the first run directory; a directory means
    ``report.png`` inside it."""
    if not run_dirs:
        raise ReportError("no run directory given")
    runs = [load_run(d) for d in run_dirs]
    out = Path(out) if out is not None else runs[0].path / "report.png"
    if out.is_dir():
        out = out / "report.png"
    fig = build_figure(runs, log_steps)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    atomic_write_bytes(out, png.getvalue())  # a viewer refreshing the file never sees half a PNG
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _table_rows(summary: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested summary sections ({"best": {"val/loss": ...}}) become "best · val/loss" rows."""
    rows: list[tuple[str, Any]] = []
    for key, value in summary.items():
        name = f"{prefix} · {key}" if prefix else str(key)
        rows += _table_rows(value, name) if isinstance(value, dict) and value else [(name, value)]
    return rows


def _last_values(run: RunData) -> dict[str, Any]:
    """Summary of a run still in progress: the latest value of each metric."""
    return {m: float(v[-1]) for m, (_, v) in sorted(run.curves.items()) if len(v)}


def write_html_summary(run_dir: Path | str) -> Path:
    """Write ``report.html``: status, gate, the summary table and report.png embedded (one file)."""
    run = load_run(run_dir)
    png = write_report([run.path])
    image = base64.b64encode(png.read_bytes()).decode("ascii")
    info = {"status": f"stopped: {run.stopped_reason}" if run.finished else "in progress",
            "gate": run.gate or None, "gate passed": run.gate_passed}
    if run.gate_failure_reason:
        info["gate failure"] = run.gate_failure_reason
    rows = [*info.items(), *_table_rows(run.summary or _last_values(run))]
    table = "\n".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(run.name)} — trainforge report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1500px}} table{{border-collapse:collapse}}
th,td{{border:1px solid #ccc;padding:4px 10px;text-align:left;font-family:monospace}} th{{background:#f4f4f4}}
img{{max-width:100%}}</style></head>
<body><h1>{html.escape(run.name)}</h1>
<table>
{table}
</table>
<h2>Curves</h2><img alt="report.png" src="data:image/png;base64,{image}">
</body></html>
"""
    out = run.path / "report.html"
    atomic_write_text(out, page)
    return out
