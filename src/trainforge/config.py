"""TrainConfig: one validated object for a run, from code or a YAML/TOML file with dotted overrides.

Every section forbids unknown keys, so a typo fails at the door naming the key. ``ConfigError``
carries one message per problem: the field's dotted path, the value given and what is allowed.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator


class ConfigError(ValueError):
    """A bad configuration: the message names the field, the value and what is allowed."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class OptimizerConfig(Section):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(3e-4, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.01, ge=0, description="applied to weights only, never biases or norms")
    betas: tuple[float, float] = Field((0.9, 0.999), description="adam/adamw")
    eps: float = Field(1e-8, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1, description="sgd only")
    nesterov: bool = False
    decay_all: bool = Field(False, description="weight decay on every parameter (biases, norms, embeddings "
                            "too), as torch.optim.Adam(model.parameters(), weight_decay=...) does; "
                            "default: tensors of 2+ dims only")

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError("each beta must be in [0, 1)")
        return v


class ScheduleConfig(Section):
    name: Literal["warmup_cosine", "constant", "linear", "one_cycle", "cyclic", "plateau"] = "warmup_cosine"
    warmup: float = Field(0.1, ge=0, lt=1, description="fraction of total optimizer steps spent warming up")
    warmup_steps: int | None = Field(None, ge=0, description="overrides `warmup` when set")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="floor of the decay, as a fraction of lr")
    total_steps: int | None = Field(None, gt=0, description="decay horizon; default: the run's total optimizer steps")
    cycle_steps: int = Field(1000, gt=0, description="cyclic: steps per half cycle")
    patience: int = Field(5, ge=0, description="plateau: evaluations without improvement before decay")
    factor: float = Field(0.5, gt=0, lt=1, description="plateau: multiply lr by this on a plateau")
    monitor: str = Field("val/loss", description="plateau: metric to watch (mode min)")


class GradConfig(Section):
    accumulate: int = Field(1, ge=1, description="micro-batches per optimizer step")
    clip_norm: float | None = Field(None, gt=0, description="clip the global gradient norm to this; null disables")
    clip_value: float | None = Field(None, gt=0, description="clamp every gradient element to +-value")
    non_finite: Literal["skip", "halt", "rollback"] = "skip"
    rollback_lr_factor: float = Field(0.5, gt=0, le=1, description="rollback: lr multiplier after a restore")
    max_rollbacks: int = Field(3, ge=0, description="rollback: give up with ERROR after this many")


class CheckpointConfig(Section):
    every_epochs: int | None = Field(1, ge=1)
    every_steps: int | None = Field(None, ge=1)
    keep_last: int = Field(3, ge=1)
    keep_best: int = Field(1, ge=0)
    monitor: str | None = "val/loss"
    mode: Literal["min", "max"] = "min"
    save_last: bool = Field(True, description="save a checkpoint when the run ends")
    async_save: bool = Field(False, description="write in a background thread; training continues")
    enabled: bool = True


class ValidationConfig(Section):
    every_epochs: int | None = Field(1, ge=1)
    every_steps: int | None = Field(None, ge=1)
    max_batches: int | None = Field(None, ge=1, description="cap on validation batches per evaluation")
    batch_size: int | None = Field(None, ge=1, description="default: batch_size")


class LogConfig(Section):
    level: Literal["minimal", "standard", "verbose"] = "standard"
    every_steps: int = Field(10, ge=1)
    sinks: list[Literal["console", "jsonl", "csv", "tensorboard", "mlflow"]] = ["console", "jsonl", "csv"]
    progress: bool = Field(True, description="tqdm bar per epoch")
    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str = "trainforge"
    memory: bool = Field(True, description="log process RSS (and CUDA peak) every log step")
    profile_steps: int = Field(0, ge=0, description="write a torch.profiler trace of this many steps")


class DistributedConfig(Section):
    strategy: Literal["ddp", "fsdp", "none"] = "ddp"
    backend: Literal["auto", "gloo", "nccl"] = "auto"


class EarlyStoppingConfig(Section):
    monitor: str = "val/loss"
    mode: Literal["min", "max"] = "min"
    patience: int = Field(5, ge=1)
    min_delta: float = Field(0.0, ge=0)


class LambWarmup(Section):
    """Grokfast ``lamb`` rising linearly from 0 at step 0 to ``value`` at step ``warmup``."""

    warmup: int = Field(..., ge=1, le=100_000_000, description="optimizer steps to reach `value`")
    value: float = Field(..., ge=0, le=100, allow_inf_nan=False, description="lamb after the warmup")


class GrokfastConfig(Section):
    """Grokfast gradient filter (Lee et al. 2024); see docs/grokfast.md."""

    filter: Literal["ema", "ma"] = Field("ema", description="ema: exponential moving average; ma: moving "
                                         "average of the last `window` gradients")
    alpha: float = Field(0.98, gt=0, lt=1, description="ema: momentum of the average (0.98: ~50-step memory)")
    window: int = Field(100, ge=1, le=10_000,
                        description="ma: gradients kept (memory: `window` gradient-sized buffers)")
    lamb: float | LambWarmup | list[tuple[int, float]] = Field(
        2.0, description="amplification of the slow gradient: a number in [0, 100], {warmup: steps, value: v}, "
                         "or [[step, value], ...] breakpoints (linear between them)")

    @field_validator("lamb", mode="before")
    @classmethod
    def _lamb_form(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("must be a number, {warmup, value} or a list of [step, value]")
        if isinstance(v, (int, float)):
            if not (math.isfinite(v) and 0 <= v <= 100):
                raise ValueError("must be a finite number in [0, 100]")
        elif isinstance(v, (list, tuple)):
            points = []
            for item in v:
                if not (isinstance(item, (list, tuple)) and len(item) == 2):
                    raise ValueError(f"breakpoints must be [step, value] pairs, got {item!r}")
                step, value = item
                if isinstance(step, bool) or not isinstance(step, int) or step < 0:
                    raise ValueError(f"breakpoint step must be an integer >= 0, got {step!r}")
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                        math.isfinite(value) and 0 <= value <= 100):
                    raise ValueError(f"breakpoint value must be a finite number in [0, 100], got {value!r}")
                points.append(step)
            if not points or any(b <= a for a, b in zip(points, points[1:])):
                raise ValueError("breakpoints: give at least one [step, value], steps strictly increasing")
        return v


GATE_OPS = (">=", "<=", ">", "<")


def parse_condition(text: str) -> tuple[str, float]:
    """'> 0.95' -> ('>', 0.95). Raises ValueError naming what is allowed."""
    s = str(text).strip()
    for op in GATE_OPS:
        if s.startswith(op):
            try:
                return op, float(s[len(op):])
            except ValueError:
                break
    raise ValueError(f"gate condition {text!r} must be '<op> <number>' with op one of {', '.join(GATE_OPS)}")


class DataSpec(Section):
    """A data file named in the config: ``{path: ..., format: jsonl, ...options}``."""

    model_config = ConfigDict(extra="allow")
    path: str
    format: str | None = None
    val_path: str | None = None
    val_fraction: float = Field(0.0, ge=0, lt=1)


class TrainConfig(Section):
    """A whole run. Every field is documented where it is declared."""

    run_dir: Path = Field(Path("runs/default"), description="all outputs go here")
    seed: int = Field(0, ge=0)
    max_epochs: int | None = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; the run ends at whichever comes first")
    batch_size: int = Field(32, ge=1)
    num_workers: int = Field(0, ge=0)
    shuffle: bool = True
    drop_last: bool = False
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")

    model: str | None = Field(None, description="'module:callable' returning an nn.Module")
    model_args: dict[str, Any] = {}
    data: str | DataSpec | None = Field(None, description="'module:callable' returning (train, val), or a data spec")
    data_args: dict[str, Any] = {}
    task: str = Field("classification", description="classification | language_model | regression | module:callable")
    recipe: str | None = Field(None, description="graph_walks | grokking | char_lm | digits")
    recipe_args: dict[str, Any] = {}

    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    grad: GradConfig = GradConfig()
    precision: Literal["32", "bf16-mixed", "16-mixed"] = "32"
    compile: bool = Field(False, description="wrap the model in torch.compile")
    checkpoint: CheckpointConfig = CheckpointConfig()
    validation: ValidationConfig = ValidationConfig()
    log: LogConfig = LogConfig()
    distributed: DistributedConfig = DistributedConfig()
    early_stopping: EarlyStoppingConfig | None = None
    gate: dict[str, str] | None = Field(None, description="{metric: '> 0.95', ...}; all must hold to pass")
    grokfast: GrokfastConfig | None = Field(None, description="Grokfast gradient filter; null: off")
    milestones: dict[str, float | str] | None = Field(
        None, description="{metric: threshold}: the first step, epoch and wall time each is reached go to "
                          "result.json; a number means >=, or give a condition such as '<= 0.1'")
    stop_on_milestone: str | list[str] | None = Field(
        None, description="end the run when this milestone (or all of these) is reached")

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) else v

    @field_validator("device")
    @classmethod
    def _device_known(cls, v: str) -> str:
        if v != "auto" and not (v == "cpu" or v == "mps" or v == "cuda" or v.startswith("cuda:")):
            raise ValueError("must be auto, cpu, mps, cuda or cuda:N")
        return v

    @field_validator("gate")
    @classmethod
    def _gate_conditions(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for cond in (v or {}).values():
            parse_condition(cond)
        return v

    @field_validator("milestones")
    @classmethod
    def _milestone_thresholds(cls, v: dict[str, float | str] | None) -> dict[str, float | str] | None:
        for name, spec in (v or {}).items():
            if not name.strip():
                raise ValueError("a milestone needs a metric name")
            if isinstance(spec, str):
                _, threshold = parse_condition(spec)
            else:
                threshold = spec
            if not math.isfinite(threshold):
                raise ValueError(f"threshold of {name!r} must be finite, got {spec!r}")
        return v

    @field_validator("stop_on_milestone")
    @classmethod
    def _stop_names_a_milestone(cls, v: str | list[str] | None, info: ValidationInfo) -> str | list[str] | None:
        names = [v] if isinstance(v, str) else list(v or [])
        if v is not None and not names:
            raise ValueError("name at least one milestone (or null)")
        known = info.data.get("milestones") or {}
        for name in names:
            if name not in known:
                raise ValueError(f"{name!r} is not a milestone (milestones: {', '.join(known) or 'none'})")
        return v

    @model_validator(mode="after")
    def _has_budget(self) -> "TrainConfig":
        if self.max_epochs is None and self.max_steps is None:
            raise ValueError("set max_epochs or max_steps (or both): the run needs a budget")
        return self

    # -- loading -----------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> "TrainConfig":
        data = apply_overrides(dict(data), overrides)
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e)) from None

    @classmethod
    def from_file(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> "TrainConfig":
        return cls.from_dict(read_config_file(path), overrides)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json())

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def read_config_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif p.suffix.lower() in (".yaml", ".yml", ".json"):
            data = yaml.safe_load(text)
        else:
            raise ConfigError(f"config file {p}: unknown extension {p.suffix!r} (use .yaml, .yml, .toml or .json)")
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"config file {p} is not valid {p.suffix[1:].upper()}: {_one_line(e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of keys, not a {type(data).__name__}")
    return data


def _one_line(e: Exception) -> str:
    """A parser error as one line: its problem and where (YAML's own message spans several lines)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(e).split())


def parse_value(text: str) -> Any:
    """An override's value, read as YAML: 1e-3 -> float, true -> bool, [a, b] -> list, null -> None."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. optimizer.lr=1e-3)")
        key, _, raw = item.partition("=")
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key part")
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
            else:
                child = dict(child)
            node[part] = child
            node = child
        node[parts[-1]] = parse_value(raw)
    return data


def format_validation_error(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
        loc = loc or "config"
        if err["type"] == "extra_forbidden":
            section = ".".join(str(p) for p in err["loc"][:-1])
            known = _known_keys(section)
            lines.append(f"unknown key `{loc}`" + (f" (known keys: {', '.join(known)})" if known else ""))
            continue
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f": got {value!r}"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"field `{loc}`{shown} — {msg}")
    return "invalid config: " + "; ".join(lines)


def _known_keys(section: str) -> list[str]:
    model: Any = TrainConfig
    for part in filter(None, section.split(".")):
        field = model.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        candidates = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not candidates:
            return []
        model = candidates[0]
    return list(model.model_fields)
