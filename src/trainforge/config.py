"""TrainConfig: one validated object for a run, from code or a YAML/TOML file with dotted overrides.

Every section forbids unknown keys, so a typo fails at the door naming the key. ``ConfigError``
carries one message per problem: the field's dotted path, the value given and what is allowed.
"""

from __future__ import annotations

import copy
import difflib
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
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)  # no .inf / .nan anywhere


class OptimizerConfig(Section):
    name: Literal["adamw", "adam", "sgd"] = Field("adamw", description="adamw (decoupled weight decay) | adam | sgd")
    lr: float = Field(3e-4, gt=0, le=10, description="peak learning rate, in (0, 10]")
    weight_decay: float = Field(0.01, ge=0, le=100, description="applied to weights only, never biases or norms; "
                                "in [0, 100] (grokking uses 1.0)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="adam/adamw")
    eps: float = Field(1e-8, gt=0, le=1, description="adam/adamw, in (0, 1]")
    momentum: float = Field(0.0, ge=0, lt=1, description="sgd only")
    nesterov: bool = Field(False, description="sgd only: Nesterov momentum")
    fused: bool | None = Field(None, description="PyTorch's fused kernel; null: where the parameters allow "
                               "(then a non-finite step is dropped on the device, with no host sync)")
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
    name: Literal["warmup_cosine", "constant", "linear", "one_cycle", "cyclic", "plateau", "sequence"] = Field(
        "warmup_cosine", description="the lr multiplier as a function of the optimizer step (plateau: of validations)")
    warmup: float = Field(0.1, ge=0, lt=1, description="fraction of total optimizer steps spent warming up")
    warmup_steps: int | None = Field(None, ge=0, le=10**12, description="overrides `warmup` when set; <= 1e12")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="floor of the decay, as a fraction of lr")
    total_steps: int | None = Field(None, gt=0, le=10**12, description="decay horizon (<= 1e12); default: the run's "
                                      "total optimizer steps")
    cycle_steps: int = Field(1000, gt=0, le=10**12, description="cyclic: steps per half cycle (<= 1e12)")
    patience: int = Field(5, ge=0, le=10**6, description="plateau (<= 1e6): evaluations in a row without improvement tolerated; "
                          "the lr drops at the next one (PyTorch ReduceLROnPlateau's meaning)")
    factor: float = Field(0.5, gt=0, lt=1, description="plateau: multiply lr by this on a plateau")
    monitor: str = Field("val/loss", description="plateau: metric to watch (mode min)")
    schedules: list[ScheduleConfig] | None = Field(None, description="sequence: schedules run one after another, "
                                                   "each for its total_steps (the last to the end of the run)")

    @model_validator(mode="after")
    def _sequence_parts(self) -> ScheduleConfig:
        if self.name != "sequence":
            if self.schedules is not None:
                raise ValueError("schedules applies to name: sequence only")
            return self
        if not self.schedules:
            raise ValueError("name: sequence needs schedules: [{name: linear, total_steps: 100}, {name: ...}, ...]")
        for i, part in enumerate(self.schedules):
            if part.name == "plateau":
                raise ValueError(f"schedules[{i}]: plateau follows validation, not the step; it cannot be in a sequence")
            if part.total_steps is None and i < len(self.schedules) - 1:
                raise ValueError(f"schedules[{i}] needs total_steps: how many steps it runs before the next starts")
        return self


class GradConfig(Section):
    accumulate: int = Field(1, ge=1, le=65536, description="micro-batches per optimizer step, in [1, 65536]")
    clip_norm: float | None = Field(None, gt=0, le=1e6, description="clip the global gradient norm to this, in "
                                     "(0, 1e6]; null disables")
    clip_value: float | None = Field(None, gt=0, le=1e6, description="clamp every gradient element to +-value, "
                                      "in (0, 1e6]")
    non_finite: Literal["skip", "halt", "rollback"] = Field(
        "skip", description="a NaN/inf loss or gradient: skip (drop the update, count it) | halt (stop with an "
        "error) | rollback (restore the last good checkpoint, lower the lr, go on)")
    rollback_lr_factor: float = Field(0.5, gt=0, le=1, description="rollback: lr multiplier after a restore")
    max_rollbacks: int = Field(3, ge=0, le=1000, description="rollback: give up with ERROR after this many")


class CheckpointConfig(Section):
    every_epochs: int | None = Field(1, ge=1, le=10**6, description="in [1, 1e6]; null: not by epochs")
    every_steps: int | None = Field(None, ge=1, le=10**12, description="in [1, 1e12]; null: not by steps")
    keep_last: int = Field(3, ge=1, le=10**6, description="the newest checkpoints kept (1 to 1e6)")
    keep_best: int = Field(1, ge=0, le=10**6, description="also keep the best ones by `monitor` (0 to 1e6)")
    monitor: str | None = Field("val/loss", description="metric that ranks checkpoints for keep_best")
    mode: Literal["min", "max"] = Field("min", description="min: lower monitor is better; max: higher")
    save_last: bool = Field(True, description="save a checkpoint when the run ends")
    async_save: bool = Field(False, description="write in a background thread; training continues")
    enabled: bool = Field(True, description="false: no checkpoints at all (a preempted run cannot resume)")


class ValidationConfig(Section):
    every_epochs: int | None = Field(1, ge=1, le=10**6, description="in [1, 1e6]; null: not by epochs")
    every_steps: int | None = Field(None, ge=1, le=10**12, description="in [1, 1e12]; null: not by steps")
    max_batches: int | None = Field(None, ge=1, le=10**12, description="cap on validation batches per evaluation")
    batch_size: int | None = Field(None, ge=1, le=2**24, description="default: batch_size; <= 2**24")


class LogConfig(Section):
    level: Literal["minimal", "standard", "verbose"] = Field(
        "standard", description="minimal: loss and lr | standard: + grad norm, throughput, memory | verbose: + grad "
        "extremes, data wait, a console line per log")
    every_steps: int = Field(10, ge=1, le=10**12, description="optimizer steps per log record (the only host sync of "
                             "the loop; 1 to 1e12)")
    sinks: list[Literal["console", "jsonl", "csv", "tensorboard", "mlflow", "wandb"]] = Field(
        ["console", "jsonl", "csv"], description="where records go (metrics.jsonl is always written)")
    progress: bool = Field(True, description="tqdm bar per epoch")
    mlflow_tracking_uri: str | None = Field(None, description="mlflow sink: store; default sqlite:///RUN_DIR/mlflow.db")
    mlflow_experiment: str = Field("trainforge", description="mlflow sink: the experiment")
    wandb_project: str = Field("trainforge", description="wandb sink: the project")
    wandb_mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="wandb sink: offline writes run_dir/wandb/ with no network (wandb sync uploads it)")
    memory: bool = Field(True, description="log process RSS (and CUDA peak) every log step")
    profile_steps: int = Field(0, ge=0, le=10**6, description="write a torch.profiler trace of this many steps")


class DistributedConfig(Section):
    """Multi-process training under torchrun (``trainforge train CONFIG --nproc N``; see docs/distributed.md).
    Ignored in a single process. ``batch_size`` is per rank: the global batch is batch_size x world size."""

    strategy: Literal["ddp", "fsdp", "none"] = Field(
        "ddp", description="ddp: every rank holds the whole model, gradients all-reduced; fsdp: FSDP2 fully_shard "
        "(parameters, gradients and optimizer state sharded per block); none: no process group even under torchrun")
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto: gloo on CPU, nccl on GPU")
    timeout_s: float = Field(600.0, ge=1, le=86400, allow_inf_nan=False,
                             description="seconds a collective may wait for the other ranks before the process "
                             "group fails (a dead or stuck rank then ends the run instead of hanging it); 1 to 86400")

class EarlyStoppingConfig(Section):
    monitor: str = Field("val/loss", description="the metric watched")
    mode: Literal["min", "max"] = Field("min", description="min: lower is better; max: higher")
    patience: int = Field(5, ge=1, le=10**6, description="stop at this many evaluations in a row without improvement "
                          "(Keras/Lightning's meaning)")
    min_delta: float = Field(0.0, ge=0, le=1e12, description="a smaller change is no improvement")


class BitNetConfig(Section):
    """BitNet quantization-aware training: nn.Linear -> BitLinear at build time (see docs/bitnet.md)."""

    weight_bits: float = Field(1.58, description="1.58 (ternary {-1, 0, 1}, absmean scale) or 1 (binary {-1, 1}, sign)")
    act_bits: int | None = Field(8, ge=2, le=16,
                                 description="per-token absmax activation bits; null keeps activations full precision")
    skip: list[str] = Field(["lm_head"],
                            description="layer names (or fnmatch patterns, or one dotted part) kept full precision")
    norm: bool = Field(False,
                       description="RMSNorm inside BitLinear before activation quantization (BitNet b1.58 notes)")
    stochastic_rounding: bool = Field(False,
                                      description="round stochastically in training (deterministic in evaluation)")
    eps: float = Field(1e-5, gt=0, le=1e-2, allow_inf_nan=False, description="keeps the scales away from 0")
    phase_in_steps: int = Field(0, ge=0, le=10_000_000,
                                description="lam rises 0 -> 1 over this many optimizer steps (0: quantized from the start)")
    regularizer: float = Field(0.0, ge=0, le=1e4, allow_inf_nan=False,
                               description="weight of the quantization regularizer loss term (loss/quant); 0 disables")
    target_sparsity: float | None = Field(None, ge=0, le=1, allow_inf_nan=False,
                                          description="fraction of zero ternary weights the regularizer pushes towards")

    @field_validator("weight_bits")
    @classmethod
    def _known_bits(cls, v: float) -> float:
        if v not in (1, 1.58):
            raise ValueError("must be 1 (binary) or 1.58 (ternary)")
        return float(v)

    @model_validator(mode="after")
    def _sparsity_needs_regularizer(self) -> "BitNetConfig":
        if self.target_sparsity is not None and self.weight_bits == 1:
            raise ValueError("target_sparsity: binary (1-bit) weights have no zeros; use weight_bits 1.58")
        if self.target_sparsity is not None and self.regularizer == 0:
            raise ValueError("target_sparsity: set regularizer > 0 too (the regularizer is what pushes towards it)")
        return self



class LossConfig(Section):
    """The training loss, for the matching task (see docs/training.md, Losses). Validation keeps the
    task's plain loss (cross-entropy, MSE), so runs trained with different losses compare."""

    name: Literal["cross_entropy", "label_smoothing", "focal", "mse", "huber", "l1", "infonce", "distill", "multitask"] = \
        Field(description="the loss (docs/training.md#losses)")
    label_smoothing: float | None = Field(None, ge=0, lt=1, allow_inf_nan=False,
                                          description="cross_entropy (0), label_smoothing (0.1), distill's hard part (0)")
    gamma: float = Field(2.0, ge=0, le=20, allow_inf_nan=False,
                         description="focal: focusing exponent (0 is cross-entropy)")
    class_weights: list[float] | None = Field(None, description="focal/cross_entropy: one positive weight per class")
    delta: float = Field(1.0, gt=0, le=1e6, allow_inf_nan=False,
                         description="huber: where the loss turns from quadratic to linear")
    temperature: float = Field(1.0, gt=0, le=100, allow_inf_nan=False,
                               description="infonce: similarity temperature; distill: softening temperature")
    alpha: float = Field(0.5, ge=0, le=1, allow_inf_nan=False,
                         description="distill: weight of the KD term; 1 - alpha weighs the hard-label loss")
    teacher: str | None = Field(None,
                                description="distill: a trainforge run dir or checkpoint dir (model.safetensors)")
    losses: dict[str, "LossConfig"] | None = Field(None, description="multitask: {part name: loss config}")
    weights: dict[str, float] | None = Field(None,
                                             description="multitask, weighting fixed: {part name: weight} (default 1)")
    weighting: Literal["fixed", "uncertainty"] = Field("fixed",
                                                       description="multitask: fixed, or learned uncertainty weights (Kendall 2018)")
    output: int | str | None = Field(None,
                                     description="multitask part: which element of a tuple/dict model output it scores")
    target: int | str | None = Field(None, description="multitask part: which element of a tuple/dict target it scores")

    @field_validator("class_weights")
    @classmethod
    def _positive_weights(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (not v or not all(0 < w < float("inf") for w in v)):
            raise ValueError("give one finite weight > 0 per class")
        return v

    @field_validator("weights")
    @classmethod
    def _finite_weights(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for key, w in (v or {}).items():
            if not 0 <= w < float("inf"):
                raise ValueError(f"weight of {key!r} must be finite and >= 0, got {w}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "LossConfig":
        if self.name == "multitask":
            if not self.losses:
                raise ValueError("multitask needs `losses: {name: {name: ...}, ...}` (at least one part)")
            unknown = sorted(set(self.weights or {}) - set(self.losses))
            if unknown:
                raise ValueError(f"weights name parts that are not in losses: {', '.join(unknown)}")
            if self.weighting == "uncertainty" and self.weights:
                raise ValueError("weighting uncertainty learns the weights: drop `weights`")
        elif self.losses is not None or self.weights is not None:
            raise ValueError(f"`losses`/`weights` belong to multitask, not {self.name}")
        if self.name == "distill" and not self.teacher:
            raise ValueError("distill needs `teacher`: a run dir or checkpoint dir of the teacher model")
        return self


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
    path: str = Field(description="the training data file (or glob, streaming)")
    format: str | None = Field(None, description="json | jsonl | csv | hdf5 | npy | npz | bin | pickle; default: "
                                  "from the extension")
    val_path: str | None = Field(None, description="a validation file (or use val_fraction)")
    val_fraction: float = Field(0.0, ge=0, lt=1, description="a seeded split of the training data for validation")


class TrainConfig(Section):
    """A whole run. Every field is documented where it is declared."""

    run_dir: Path = Field(Path("runs/default"), description="all outputs go here")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="in [0, 2**32 - 1] (what numpy accepts)")
    max_epochs: int | None = Field(10, ge=1, le=10**6, description="in [1, 1e6]")
    max_steps: int | None = Field(None, ge=1, le=10**12, description="optimizer steps, in [1, 1e12]; the run ends "
                                  "at whichever comes first")
    batch_size: int = Field(32, ge=1, le=2**24, description="samples per batch, in [1, 2**24]; under "
                            "torchrun per rank (global batch = batch_size x world size)")
    num_workers: int = Field(0, ge=0, le=256, description="DataLoader worker processes, in [0, 256]")
    shuffle: bool = Field(True, description="a new order each epoch, a pure function of (seed, epoch)")
    drop_last: bool = Field(False, description="drop a last, smaller batch of each epoch")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")

    model: str | None = Field(None, description="'module:callable' returning an nn.Module")
    model_args: dict[str, Any] = Field({}, description="keyword arguments of the `model` callable")
    data: str | DataSpec | None = Field(None, description="'module:callable' returning (train, val), or a data spec")
    data_args: dict[str, Any] = Field({}, description="keyword arguments of the `data` callable (it also gets "
                                      "seed= when it has that parameter)")
    task: str = Field("classification", description="classification | language_model | regression | module:callable")
    recipe: str | None = Field(None, description="graph_walks | grokking | char_lm | digits")
    recipe_args: dict[str, Any] = Field({}, description="the recipe's own settings (see docs/recipes.md)")

    optimizer: OptimizerConfig = Field(OptimizerConfig(), description="the optimizer")
    schedule: ScheduleConfig = Field(ScheduleConfig(), description="the learning-rate schedule")
    grad: GradConfig = Field(GradConfig(), description="accumulation, clipping, non-finite steps")
    precision: Literal["32", "bf16-mixed", "16-mixed"] = Field(
        "32", description="32 | bf16-mixed (autocast) | 16-mixed (autocast + gradient scaler)")
    compile: bool = Field(False, description="wrap the model in torch.compile")
    sanity_check: bool = Field(True, description="before the first step, one training and one validation batch "
                               "through model, loss and backward (no trace left): user mistakes fail at once")
    checkpoint: CheckpointConfig = Field(CheckpointConfig(), description="when checkpoints are written and kept")
    validation: ValidationConfig = Field(ValidationConfig(), description="when and on how much the run validates")
    log: LogConfig = Field(LogConfig(), description="what is logged, how often, where")
    distributed: DistributedConfig = Field(DistributedConfig(), description="multi-process training")
    early_stopping: EarlyStoppingConfig | None = Field(None, description="stop when a metric stops improving")
    gate: dict[str, str] | None = Field(None, description="{metric: '> 0.95', ...}; all must hold to pass")
    bitnet: BitNetConfig | None = Field(None, description="BitNet quantization-aware training; null = dense")
    loss: LossConfig | None = Field(None, description="the training loss; null = the task's default")
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

    @field_validator("task")
    @classmethod
    def _task_known(cls, v: str) -> str:
        from .tasks import TASKS  # the built-in task names live beside the tasks
        if v not in TASKS and ":" not in v:
            close = difflib.get_close_matches(v, list(TASKS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown task{hint}: use {', '.join(TASKS)}, or 'module:callable'")
        return v

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
    def from_dict(cls, data: dict[str, Any], overrides: list[str] | tuple[str, ...] = (),
                  run_dir: str | Path | None = None) -> "TrainConfig":
        """The fields, then the dotted ``overrides``, then ``run_dir``; under them all, the named
        recipe's defaults. This is the one path every config takes (``trainforge train`` included)."""
        data = apply_overrides(copy.deepcopy(dict(data)), overrides)
        if run_dir is not None:
            data["run_dir"] = str(run_dir)
        if isinstance(data.get("recipe"), str):
            from .recipes import load_recipe  # recipes build configs: loaded by name, on demand
            data = deep_merge(recipe_defaults_under(load_recipe(data["recipe"]).DEFAULTS, data), data)
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e)) from None

    @classmethod
    def from_file(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                  run_dir: str | Path | None = None) -> "TrainConfig":
        return cls.from_dict(read_config_file(path), overrides, run_dir)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json())

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def recipe_defaults_under(defaults: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    """A recipe's defaults as they apply under the user's fields: a budget the user set
    (``max_steps`` / ``max_epochs``) also sets the schedule's horizon, unless the user set
    ``schedule.total_steps`` too — a recipe's horizon never outlives the user's budget."""
    out = copy.deepcopy(defaults)
    user_schedule = user.get("schedule") if isinstance(user.get("schedule"), dict) else {}
    if ("max_steps" in user or "max_epochs" in user) and "total_steps" not in user_schedule:
        (out.get("schedule") or {}).pop("total_steps", None)
    return out


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, section by section. A gate or grokfast section is replaced whole: its
    conditions go together (an MA filter must not inherit the default EMA's settings)."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("gate", "grokfast"):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {p} is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None
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
        raise ConfigError(f"config file {p} is empty: it needs at least a budget and a model (or a recipe), "
                          "e.g. `recipe: digits` — see configs/ for examples")
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


_TYPE_TAGS = frozenset({"int", "float", "str", "bool", "none", "list", "dict", "tuple", "set"})


def _is_branch_tag(part: Any) -> bool:
    """A step of an error location that names a union branch or a validator, not a config key
    (``int``, ``str``, ``DataSpec``, ``function-after[...]``): config keys are lower-case names."""
    return isinstance(part, str) and (part in _TYPE_TAGS or part[:1].isupper() or "[" in part
                                      or part.startswith(("function-", "constrained-")))


def _field_path(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not _is_branch_tag(p))


def _union_branch_noise(err: dict, errors: list[dict]) -> bool:
    """For a field that is a union (``data: str | DataSpec``, ``output: int | str``), the error of a
    branch the value plainly is not (a str expected) when another branch says what is really wrong."""
    if not err["type"].endswith("_type"):
        return False
    path = _field_path(err["loc"])
    return any(o is not err and not o["type"].endswith("_type") and _field_path(o["loc"]).startswith(path)
               for o in errors)


def format_validation_error(e: ValidationError) -> str:
    lines = []
    errors = e.errors()
    for err in errors:
        if _union_branch_noise(err, errors):
            continue
        loc = _field_path(err["loc"]) or "config"
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


# -- the annotated default config (`trainforge config`) ----------------------------------------------
def annotated_config(cfg: "TrainConfig | None" = None) -> str:
    """Every field of ``cfg`` (default: the defaults) with its value and description, as commented YAML."""
    return "\n".join(_annotate(TrainConfig, cfg or TrainConfig(), indent=0)) + "\n"


def _annotate(model: type[BaseModel], value: BaseModel, indent: int) -> list[str]:
    lines: list[str] = []
    pad = "  " * indent
    for name, field in model.model_fields.items():
        current = getattr(value, name)
        note = f"  # {field.description}" if field.description else ""
        section = _section_type(field.annotation)
        if isinstance(current, BaseModel):
            lines.append(f"{pad}{name}:{note}")
            lines += _annotate(type(current), current, indent + 1)
        elif current is None and section is not None:
            keys = ", ".join(section.model_fields)
            lines.append(f"{pad}{name}: null{note or '  #'} (a section: {keys})")
        else:
            shown = yaml.safe_dump(json.loads(json.dumps(current, default=str)), default_flow_style=True).strip()
            shown = shown.removesuffix("\n...").removesuffix(" ...")
            lines.append(f"{pad}{name}: {shown}{note}")
    return lines


def _section_type(annotation: Any) -> type[BaseModel] | None:
    for candidate in getattr(annotation, "__args__", (annotation,)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None
