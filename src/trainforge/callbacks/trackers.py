"""Metric sinks: CSV, TensorBoard and MLflow.

A sink is any object with three methods (duck-typed, no base class needed)::

    open(run_dir: Path, config: dict) -> None     # once, before the first record
    write(record: dict) -> None                   # one metrics.jsonl record:
                                                  #   {"kind", "step", "epoch", "time", <metric>: float, ...}
    close() -> None                               # once, at the end (also after an error)

Records reach a sink only at the log interval, already as Python floats, so a sink never
touches a tensor or syncs the device. TensorBoard and MLflow are optional extras: they are
imported when their sink opens, never when this module is imported (mlflow alone takes
about a second to import).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator, Protocol

from ..fileio import atomic_write_text

__all__ = ["Sink", "SinkError", "CsvSink", "TensorBoardSink", "MlflowSink", "make_sink", "SINKS", "flatten"]

RECORD_KEYS = ("kind", "step", "epoch", "time")  # coordinates of a record; every other key is a metric


class SinkError(ValueError):
    """An unknown sink name, or a sink whose optional package is not installed."""


class Sink(Protocol):
    def open(self, run_dir: Path, config: dict[str, Any]) -> None: ...
    def write(self, record: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def _metrics(record: dict[str, Any]) -> Iterator[tuple[str, float]]:
    """The numeric metrics of a record. Bools are flags (``mid_epoch``), strings and None are
    not metrics either."""
    for key, value in record.items():
        if key not in RECORD_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool):
            yield key, float(value)


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """{'optimizer': {'lr': 1e-3}} -> {'optimizer.lr': 1e-3}; lists stay whole (one param each)."""
    if not isinstance(config, dict):
        return {prefix: config} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        flat.update(flatten(value, name) if isinstance(value, dict) and value else {name: value})
    return flat


# ----------------------------------------------------------------------------------------------
# CSV
# ----------------------------------------------------------------------------------------------


class CsvSink:
    """``metrics.csv``: one row per record, all kinds in one file, told apart by the ``kind`` column.

    The header is the union of every key seen so far: ``kind, step, epoch, time`` and then the
    metrics in order of first appearance. A record with a new metric (the first validation, say)
    rewrites the file once under the wider header, so every row always has every column and a
    spreadsheet or ``csv.DictReader`` opens it cleanly; a metric a row lacks is an empty cell.
    Opening a run directory that already has the file (a resume) appends to it.
    """

    filename = "metrics.csv"

    def __init__(self) -> None:
        self.path: Path | None = None
        self._columns: list[str] = []
        self._file: Any = None
        self._writer: Any = None
        self._flushed = 0.0

    def open(self, run_dir: Path, config: dict[str, Any] | None = None) -> None:
        self.path = Path(run_dir) / self.filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._columns = self._existing_header() or list(RECORD_KEYS)
        if not self.path.exists() or self.path.stat().st_size == 0:
            self._rewrite([])
        self._reopen()

    def write(self, record: dict[str, Any]) -> None:
        new = [key for key in record if key not in self._columns]
        if new:
            self._columns += new
            self._rewrite(self._rows())
        self._writer.writerow([_cell(record.get(column)) for column in self._columns])
        # A crashed run keeps every row but at most the last second's (which its checkpoint holds).
        now = time.monotonic()
        if record.get("kind") != "train" or now - self._flushed >= 1.0:
            self._file.flush()
            self._flushed = now

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            try:
                os.fsync(self._file.fileno())  # durable like the run's other state files
            except OSError:
                pass
            self._file.close()
            self._file = None

    def _existing_header(self) -> list[str]:
        if self.path is None or not self.path.is_file():
            return []
        with open(self.path, newline="", encoding="utf-8") as f:
            return next(csv.reader(f), [])

    def _rows(self) -> list[list[str]]:
        self.close()
        with open(self.path, newline="", encoding="utf-8") as f:
            return list(csv.reader(f))[1:]

    def _rewrite(self, rows: list[list[str]]) -> None:
        """Write header + rows to a temporary file and rename it into place (never half a file)."""
        self.close()
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(self._columns)
        width = len(self._columns)
        writer.writerows(row + [""] * (width - len(row)) for row in rows)
        atomic_write_text(self.path, text.getvalue())
        self._reopen()

    def _reopen(self) -> None:
        if self._file is None:
            self._file = open(self.path, "a", newline="", encoding="utf-8")
            self._writer = csv.writer(self._file)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back to the same float
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


# ----------------------------------------------------------------------------------------------
# TensorBoard
# ----------------------------------------------------------------------------------------------


class TensorBoardSink:
    """Event files under ``run_dir/tensorboard/``: each numeric metric a scalar at ``step``,
    with the record's wall time, the resolved config as a text summary, and at the end the
    settings with the final metrics as hparams.

    On a resume (event files already there) the first record's step is the purge step:
    TensorBoard then hides what the killed run logged past its last checkpoint, instead of
    drawing two overlapping curves."""

    def __init__(self, subdir: str = "tensorboard") -> None:
        self.subdir = subdir
        self.log_dir: Path | None = None
        self._writer: Any = None
        self._config: dict[str, Any] = {}
        self._final: dict[str, float] = {}  # each metric's last value, for the hparams table

    def open(self, run_dir: Path, config: dict[str, Any] | None = None) -> None:
        _require("tensorboard", "tensorboard")
        self.log_dir = Path(run_dir) / self.subdir
        self._config = config or {}

    def write(self, record: dict[str, Any]) -> None:
        if self._writer is None:
            self._start(int(record.get("step", 0)))
        step, walltime = int(record.get("step", 0)), record.get("time")
        for key, value in _metrics(record):
            self._writer.add_scalar(key, value, global_step=step, walltime=walltime)
            self._final[key] = value

    def close(self, status: str = "FINISHED") -> None:
        if self._writer is None and self.log_dir is not None:
            self._start(None)  # a run with no records still leaves its config behind
        if self._writer is not None:
            self._write_hparams()
            self._writer.close()
            self._writer = None

    def _write_hparams(self) -> None:
        """The run's settings and final metrics in TensorBoard's HParams tab, so runs compare in one table
        (written into this run's own event files, not a sub-run)."""
        from torch.utils.tensorboard.summary import hparams

        params = {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v, default=str)
                  for k, v in flatten(self._config).items() if k != "run_dir" and v is not None}
        if not params or not self._final:
            return
        for summary in hparams(params, dict(self._final)):
            self._writer.file_writer.add_summary(summary)

    def _start(self, first_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when used

        resumed = self.log_dir.is_dir() and any(self.log_dir.glob("events.out.tfevents.*"))
        self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=first_step if resumed else None)
        if self._config and not resumed:
            # Markdown code block: TensorBoard's text plugin keeps the indentation.
            text = json.dumps(self._config, indent=2, default=str)
            self._writer.add_text("config", "    " + text.replace("\n", "\n    "), global_step=0)


# ----------------------------------------------------------------------------------------------
# MLflow
# ----------------------------------------------------------------------------------------------

_MLFLOW_BAD_CHARS = re.compile(r"[^/\w.\- ]")  # what mlflow accepts on every OS (':' not on Windows)
_MLFLOW_KEY_MAX = 250
_MLFLOW_PARAMS_PER_BATCH = 100
_MLFLOW_METRICS_PER_BATCH = 1000


def mlflow_key(name: str) -> str:
    """A legal mlflow metric/param name: bad characters to '_', no empty, '.' or '..' path parts
    (mlflow rejects names that normalise to another path, such as 'a//b' or '/a')."""
    parts = [p for p in _MLFLOW_BAD_CHARS.sub("_", name).split("/") if p not in ("", ".", "..")]
    return ("/".join(parts) or "_")[:_MLFLOW_KEY_MAX]


class MlflowSink:
    """Logs params (the flattened config) and metrics (at ``step``) to an MLflow run.

    ``tracking_uri`` defaults to a SQLite store inside the run directory
    (``sqlite:///<run_dir>/mlflow.db``): offline, one file, nothing to start. (MLflow 3 has
    put the ``./mlruns`` file store in maintenance mode and refuses it by default.) View it with
    ``mlflow ui --backend-store-uri sqlite:///<run_dir>/mlflow.db``.

    The MLflow run is tagged with the run directory; a resume of the same directory continues
    the same MLflow run. Metrics are sent in batches at most every ``flush_secs`` seconds (and
    at every validation/epoch record), so a fast log interval costs one database write per batch.
    """

    RUN_DIR_TAG = "trainforge.run_dir"

    def __init__(self, tracking_uri: str | None = None, experiment: str = "trainforge",
                 flush_secs: float = 5.0) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.flush_secs = flush_secs
        self.run_id: str | None = None
        self._client: Any = None
        self._pending: list[Any] = []
        self._last_flush = 0.0

    def open(self, run_dir: Path, config: dict[str, Any] | None = None) -> None:
        _require("mlflow", "mlflow")
        # Runs here have no network: do not let MLflow try to phone home (the user can override).
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.tracking import MlflowClient  # about a second to import: only when used

        run_dir = Path(run_dir).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = self.tracking_uri or f"sqlite:///{run_dir / 'mlflow.db'}"
        self._client = MlflowClient(self.tracking_uri)
        experiment = self._client.get_experiment_by_name(self.experiment)
        experiment_id = experiment.experiment_id if experiment else self._client.create_experiment(self.experiment)
        previous = self._client.search_runs(
            [experiment_id], filter_string=f"tags.`{self.RUN_DIR_TAG}` = '{_quote(str(run_dir))}'", max_results=1)
        if previous:
            self.run_id = previous[0].info.run_id
            self._client.update_run(self.run_id, status="RUNNING")
        else:
            run = self._client.create_run(experiment_id, run_name=run_dir.name, tags={self.RUN_DIR_TAG: str(run_dir)})
            self.run_id = run.info.run_id
        self._log_params(config or {})
        self._last_flush = time.monotonic()

    def write(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        step = int(record.get("step", 0))
        millis = int(float(record.get("time", time.time())) * 1000)
        self._pending += [Metric(mlflow_key(k), v, millis, step) for k, v in _metrics(record)]
        if record.get("kind") != "train" or time.monotonic() - self._last_flush >= self.flush_secs:
            self.flush()

    def flush(self) -> None:
        for i in range(0, len(self._pending), _MLFLOW_METRICS_PER_BATCH):
            self._client.log_batch(self.run_id, metrics=self._pending[i:i + _MLFLOW_METRICS_PER_BATCH])
        self._pending = []
        self._last_flush = time.monotonic()

    def close(self, status: str = "FINISHED") -> None:
        """End the MLflow run; pass ``status="FAILED"`` or ``"KILLED"`` for a run that did not finish."""
        if self._client is None or self.run_id is None:
            return
        try:
            self.flush()
        finally:
            self._client.set_terminated(self.run_id, status=status)
            self._client = None

    def _log_params(self, config: dict[str, Any]) -> None:
        """Log the flattened config. MLflow forbids changing a logged param, so a resumed run
        logs only keys it has not seen (a changed value keeps its first one in MLflow)."""
        from mlflow.entities import Param

        logged = self._client.get_run(self.run_id).data.params
        params = [Param(mlflow_key(k), _param_value(v)) for k, v in flatten(config).items()]
        params = [p for p in params if p.key not in logged]
        for i in range(0, len(params), _MLFLOW_PARAMS_PER_BATCH):
            self._client.log_batch(self.run_id, params=params[i:i + _MLFLOW_PARAMS_PER_BATCH])


def _param_value(value: Any) -> str:
    text = json.dumps(value, default=str) if isinstance(value, (list, dict)) else str(value)
    return text[:6000]  # mlflow's limit on a param value


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


# ----------------------------------------------------------------------------------------------
# Factory
# ----------------------------------------------------------------------------------------------

def _wandb_sink(**kwargs: Any) -> Sink:
    from .wandb_sink import WandbSink  # its own module, loaded only when asked for
    return WandbSink(**kwargs)


SINKS: dict[str, Any] = {"csv": CsvSink, "tensorboard": TensorBoardSink, "mlflow": MlflowSink, "wandb": _wandb_sink}
_EXTRAS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}  # sink name -> module it needs


def _require(sink: str, module: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise SinkError(f"the {sink!r} sink needs the {module!r} package: pip install trainforge[{sink}]")


def make_sink(name: str, **kwargs: Any) -> Sink:
    """Build a sink by name: ``csv`` | ``tensorboard`` | ``mlflow`` | ``wandb`` (keyword arguments go to its
    constructor). Fails here, before the run starts, on an unknown name or a missing package."""
    key = name.strip().lower()
    if key not in SINKS:
        raise SinkError(f"unknown sink {name!r}; choose one of: {', '.join(sorted(SINKS))}")
    if key in _EXTRAS:
        _require(key, _EXTRAS[key])
    try:
        return SINKS[key](**kwargs)
    except TypeError as exc:
        raise SinkError(f"sink {name!r}: {exc}") from exc

