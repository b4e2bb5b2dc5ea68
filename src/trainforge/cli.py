"""trainforge train | resume | demo | report | checkpoints | inspect | sample | export | lr-find | config.

Exit codes: 0 finished (a gate or early stop is a normal finish), 2 bad input (one message on
stderr), 75 preempted by SIGTERM/SIGINT after writing a checkpoint (``trainforge resume`` continues),
1 the run failed (a checkpoint that could not be written, a preemption with checkpointing disabled,
an unexpected error: its traceback is saved to RUN_DIR/error.log; ``--traceback`` prints it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_PREEMPTED = 0, 1, 2, 75


class BadInput(Exception):
    """Anything the user can fix: printed as one line, exit 2."""


_RUN_DIR: list[Path] = []  # the run directory once a command knows it: where error.log goes
_ARGV: list[str] = []  # the command line, for a launch through torchrun


def note_run_dir(path: Any) -> None:
    _RUN_DIR[:] = [Path(path)]


def bounded(kind: type, low: float, high: float) -> Any:
    """An argparse type: a finite number of ``kind`` in [low, high]."""
    def parse(text: str) -> Any:
        value = kind(text)  # a ValueError reads "invalid int value: 'two'"
        if not (low <= value <= high):  # also false for nan
            raise argparse.ArgumentTypeError(f"{text} is out of range: use a value in [{low:g}, {high:g}]")
        return value
    parse.__name__ = kind.__name__
    return parse


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one message, not usage + error
        raise BadInput(f"{self.prog}: {message} (see {self.prog} --help)")


def launch_flags(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--nproc", type=bounded(int, 1, 1024), default=1,
                     help="local worker processes, launched through torchrun (1: this process; see docs/distributed.md)")
    cmd.add_argument("--max-restarts", type=bounded(int, 0, 1000), default=0,
                     help="torchrun restarts the workers this many times after a failure; each resumes from the "
                          "newest complete checkpoint (0 to 1000, default 0)")


def build_parser() -> Parser:
    p = Parser(prog="trainforge", description="A PyTorch training engine: train, resume and inspect runs.")
    p.add_argument("--traceback", action="store_true", help="print the full traceback of any failure")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    def overrides(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config field by its dotted key, e.g. --set optimizer.lr=1e-3 (repeatable)")
        cmd.add_argument("--run-dir", help="write the run here instead of the config's run_dir")

    t = sub.add_parser("train", help="train from a YAML/TOML config file",
                       description="Train from a config file. Running it again on the same run dir starts fresh; "
                                   "use `trainforge resume RUN_DIR` to continue.")
    t.add_argument("config", help="path to a .yaml, .yml or .toml config")
    overrides(t)
    launch_flags(t)
    t.add_argument("--resume", action="store_true", help="continue from the run dir's latest checkpoint if there is one")

    r = sub.add_parser("resume", help="continue a run from its latest valid checkpoint",
                       description="Continue a run from its latest valid checkpoint, with the run's own config.yaml. "
                                   "A finished run is left as it is.")
    r.add_argument("run_dir", help="the run directory (holds config.yaml and checkpoints/)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change a resumable setting, e.g. --set max_epochs=20 (differences are reported)")
    r.add_argument("--allow-data-change", action="store_true",
                   help="resume although the training data changed since the checkpoint (recorded in result.json)")
    launch_flags(r)

    d = sub.add_parser("demo", help="run a recipe end to end (default: graph_walks)",
                       description="Run a built-in recipe end to end and write its report.")
    d.add_argument("name", nargs="?", default="graph_walks", help="graph_walks (default), grokking, char_lm or digits")
    overrides(d)
    launch_flags(d)

    rep = sub.add_parser("report", help="draw report.png for one or more runs (overlaid)",
                         description="Draw train loss, learning rate, validation metrics, gradient norm and "
                                     "throughput; several run dirs are overlaid on one figure.")
    rep.add_argument("run_dirs", nargs="+", help="one or more run directories")
    rep.add_argument("--out", help="output PNG path (default: RUN_DIR/report.png of the first run)")
    scale = rep.add_mutually_exclusive_group()
    scale.add_argument("--log-steps", dest="log_steps", action="store_true", default=None,
                       help="log-scale step axis (default: when the runs' lengths differ tenfold or more)")
    scale.add_argument("--linear-steps", dest="log_steps", action="store_false", help="linear step axis")

    c = sub.add_parser("checkpoints", help="list a run's checkpoints",
                       description="List checkpoints: name, step, epoch, monitored value, size, pinned, valid.")
    c.add_argument("run_dir", help="the run directory")

    i = sub.add_parser("inspect", help="show a checkpoint's step, metrics, tensor shapes and config",
                       description="Verify a checkpoint and show its step, epoch, metrics, shapes and config.")
    i.add_argument("checkpoint", help="a checkpoint directory (RUN_DIR/checkpoints/NAME)")

    cf = sub.add_parser("config", help="print every config field with its value and what it means",
                        description="Print the full config as commented YAML: every field, its value (the defaults, "
                                    "or CONFIG resolved with its recipe's defaults and --set) and its description.")
    cf.add_argument("config", nargs="?", help="a config file to resolve (default: print the defaults)")
    cf.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field by its dotted key (repeatable)")

    lf = sub.add_parser("lr-find", help="learning-rate range test: loss vs lr, a suggested lr, a PNG",
                        description="Train a copy of the config's model for a few steps while the lr grows "
                                    "exponentially; print the lr where the loss falls fastest and draw the curve. "
                                    "The run directory is not touched.")
    lf.add_argument("config", help="path to a .yaml, .yml or .toml config")
    lf.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field by its dotted key (repeatable)")
    lf.add_argument("--min-lr", type=float, default=1e-7, help="first lr of the sweep (default 1e-7)")
    lf.add_argument("--max-lr", type=float, default=10.0, help="last lr of the sweep (default 10)")
    lf.add_argument("--steps", type=int, default=100, help="optimizer steps in the sweep (default 100)")
    lf.add_argument("--out", default="lr_find.png", help="the PNG to write (default ./lr_find.png)")

    s = sub.add_parser("sample", help="generate text from a trained language-model run",
                       description="Load a run's latest checkpoint and generate text (recipes with a sampler: char_lm).")
    s.add_argument("run_dir", help="the run directory")
    s.add_argument("--prompt", default="\n", help="text to start from (default: a newline)")
    s.add_argument("--tokens", type=bounded(int, 1, 1_000_000), default=500,
                   help="how many tokens to generate, 1 to 1e6 (default 500)")
    s.add_argument("--temperature", type=bounded(float, 1e-3, 100.0), default=0.8,
                   help="sampling temperature, 0.001 to 100 (default 0.8)")
    s.add_argument("--top-k", type=bounded(int, 1, 10_000_000), default=200,
                   help="sample from the k most likely tokens, k >= 1 (default 200)")
    s.add_argument("--seed", type=bounded(int, 0, 2**32 - 1), default=0, help="random seed, 0 to 2**32-1 (default 0)")

    e = sub.add_parser("export", help="write a BitNet run's model with packed low-bit weights",
                       description="Load a BitNet run's latest valid checkpoint (or --checkpoint) and write its "
                                   "quantized layers packed (2 bits per ternary, 1 bit per binary weight) with every "
                                   "full-precision tensor, in safetensors; prints the sizes.")
    e.add_argument("run_dir", help="the run directory (its config.yaml must have a `bitnet:` section)")
    e.add_argument("--bitnet", required=True, metavar="OUT", help="output file, e.g. model.bitnet.safetensors")
    e.add_argument("--checkpoint", help="a checkpoint directory to export instead of the latest valid one")
    for cmd in sub.choices.values():  # also after the command: `trainforge train cfg.yaml --traceback`
        cmd.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                         help="print the full traceback of any failure")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The one outer handler: every failure becomes one message and an exit code (``failures``).
    Under torchrun each worker records its exit code, and only rank 0 prints (``distributed.launch``)."""
    from .distributed.launch import in_worker, run_worker
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    return run_worker(_main, argv) if in_worker() else _main(argv)


def _main(argv: list[str]) -> int:
    from .failures import report
    _RUN_DIR.clear()
    _ARGV[:] = argv
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except BadInput as e:
        return fail(str(e))
    except SystemExit as e:  # Preempted, or argparse --help
        message = getattr(e, "message", None)
        if message and not getattr(e, "printed", False):
            print(message, file=sys.stderr)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else fail(str(e.code), EXIT_FAILED))
    except KeyboardInterrupt:
        return fail("trainforge: interrupted", EXIT_FAILED)
    except Exception as e:  # noqa: BLE001 - the one place every other failure is told
        return report(e, run_dir=_RUN_DIR[0] if _RUN_DIR else None, argv=argv, show_traceback="--traceback" in argv)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(message, file=sys.stderr)
    return code


def cmd_train(args: argparse.Namespace) -> int:
    from .distributed.launch import restarted
    from .run import load_config, run_config
    cfg = load_config(args.config, args.overrides, args.run_dir)  # checked once, before any worker starts
    note_run_dir(cfg.run_dir)
    resume = args.resume or restarted()  # an elastic restart continues from the newest complete checkpoint
    if not resume and _has_checkpoints(Path(cfg.run_dir)):
        raise BadInput(f"trainforge train: {cfg.run_dir} already holds a run with checkpoints; continue it with "
                       f"`trainforge resume {cfg.run_dir}` (or train --resume), or pass --run-dir for a new run")
    if _launching(args):
        return _launch(args)
    return finish(run_config(cfg, resume=resume), cfg)


def _launching(args: argparse.Namespace) -> bool:
    """--nproc > 1 or --max-restarts in this (launcher) process: the workers run under torchrun."""
    from .distributed.launch import in_worker
    return (args.nproc > 1 or args.max_restarts > 0) and not in_worker()


def _launch(args: argparse.Namespace) -> int:
    from .distributed.launch import launch
    return launch(_ARGV, args.nproc, args.max_restarts)


def cmd_resume(args: argparse.Namespace) -> int:
    from .run import load_config, run_config
    config = Path(args.run_dir) / "config.yaml"
    if not config.is_file():
        raise BadInput(f"trainforge resume: {args.run_dir} is not a run directory (no config.yaml)")
    note_run_dir(args.run_dir)
    cfg = load_config(config, args.overrides, args.run_dir)
    if _launching(args):
        return _launch(args)
    return finish(run_config(cfg, resume=True, allow_data_change=args.allow_data_change), cfg)


def cmd_demo(args: argparse.Namespace) -> int:
    from .run import resolve_config, run_config
    cfg = resolve_config({"recipe": args.name, "run_dir": f"runs/{args.name}"}, args.overrides, args.run_dir)
    note_run_dir(cfg.run_dir)
    if _launching(args):
        return _launch(args)
    # A demo continues its own run (an interrupted demo picks up where it stopped); a finished one
    # says so and points at its results.
    code = finish(run_config(cfg, resume=True), cfg)
    print(f"  (to train again from scratch: trainforge demo {args.name} --run-dir runs/{args.name}-2)", file=sys.stderr)
    return code


def finish(result: Any, cfg: Any) -> int:
    run_dir = Path(cfg.run_dir)
    gate = "" if result.gate_passed is None else f" · gate {'passed' if result.gate_passed else 'NOT passed'}"
    print(f"trainforge: finished — {result.stopped_reason}{gate}", file=sys.stderr)
    print(f"  run dir:     {run_dir}", file=sys.stderr)
    print(f"  result.json: {run_dir / 'result.json'}", file=sys.stderr)
    if (run_dir / "report.png").exists():
        print(f"  report.png:  {run_dir / 'report.png'}", file=sys.stderr)
    if result.final_checkpoint:
        print(f"  checkpoint:  {result.final_checkpoint}", file=sys.stderr)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from .report import ReportError, write_report
    try:
        path = write_report([Path(d) for d in args.run_dirs], Path(args.out) if args.out else None,
                            log_steps=args.log_steps)
    except ReportError as e:
        raise BadInput(f"trainforge report: {e}") from None
    print(path)
    return EXIT_OK


def cmd_checkpoints(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointManager, format_checkpoint_table
    directory = Path(args.run_dir) / "checkpoints"
    if not Path(args.run_dir).is_dir():
        raise BadInput(f"trainforge checkpoints: {args.run_dir} is not a directory" if Path(args.run_dir).exists()
                       else f"trainforge checkpoints: {args.run_dir} does not exist")
    if directory.exists() and not directory.is_dir():
        raise BadInput(f"trainforge checkpoints: {directory} is a file, not a directory of checkpoints")
    if not directory.is_dir():
        print(f"no checkpoints in {args.run_dir}")
        return EXIT_OK
    config = _run_config_dict(Path(args.run_dir))
    ck = config.get("checkpoint", {})
    manager = CheckpointManager(directory, keep_last=None, monitor=ck.get("monitor"), mode=ck.get("mode", "min"))
    print(format_checkpoint_table(manager.list()))
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint
    path = Path(args.checkpoint)
    if not path.exists():
        raise BadInput(f"trainforge inspect: {path} does not exist")
    if not path.is_dir():
        raise BadInput(f"trainforge inspect: {path} is a file; name a checkpoint directory (RUN_DIR/checkpoints/NAME)")
    payload = load_checkpoint(path)
    meta = payload["meta"] if isinstance(payload["meta"], dict) else {}
    state = meta.get("state", {})
    counters = state.get("counters", {})
    shapes = {k: list(v.shape) for k, v in payload["model"].items()}
    print(f"checkpoint {path}")
    print(f"  step {counters.get('step')} · epoch {counters.get('epoch')} · batch in epoch "
          f"{counters.get('batch_in_epoch')} · samples {counters.get('samples_seen')}")
    print(f"  stopped: {state.get('stopped_reason')}")
    metrics = meta.get("metrics") or {}
    if metrics:
        print("  metrics: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()) if isinstance(v, (int, float))))
    n = sum(_numel(s) for s in shapes.values())
    print(f"  model: {len(shapes)} tensors, {n:,} values; optimizer {meta.get('optimizer')}; task {meta.get('task')}")
    for name, shape in shapes.items():
        print(f"    {name}: {shape}")
    print("  config:")
    print("    " + json.dumps(meta.get("config", {}), sort_keys=True))
    return EXIT_OK


def cmd_sample(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointManager
    from .recipes import load_recipe
    from .run import load_config
    run_dir = Path(args.run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise BadInput(f"trainforge sample: {run_dir} is not a run directory (no config.yaml)")
    note_run_dir(run_dir)
    cfg = load_config(run_dir / "config.yaml", run_dir=str(run_dir))
    recipe = load_recipe(cfg.recipe) if cfg.recipe else None
    if recipe is None or not hasattr(recipe, "sample_text"):
        raise BadInput(f"trainforge sample: the run's recipe ({cfg.recipe}) has no text sampler; char_lm has one")
    info = CheckpointManager(run_dir / "checkpoints", keep_last=None).latest_valid()
    if info is None:
        raise BadInput(f"trainforge sample: no valid checkpoint in {run_dir / 'checkpoints'}")
    parts = recipe.build(cfg)
    from .checkpoint import load_checkpoint
    from .transforms import LOSS_MODULE, convert_from_config
    if cfg.bitnet is not None:  # a BitNet run samples from its quantized model
        convert_from_config(parts.model, cfg.bitnet)
    parts.model.load_state_dict({k: v for k, v in load_checkpoint(info.path)["model"].items()
                                 if not k.startswith(LOSS_MODULE + ".")})
    text = recipe.sample_text(parts.model, cfg, args.prompt, max_new_tokens=args.tokens,
                              temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    print(text)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointManager, load_checkpoint
    from .quant import export_bitnet
    from .run import build_parts, load_config
    from .transforms import LOSS_MODULE, convert_from_config
    run_dir = Path(args.run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise BadInput(f"trainforge export: {run_dir} is not a run directory (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml", run_dir=str(run_dir))
    if cfg.bitnet is None:
        raise BadInput(f"trainforge export: the run in {run_dir} was trained dense (no `bitnet:` in its config.yaml); "
                       "--bitnet exports BitNet runs")
    if args.checkpoint:
        checkpoint = Path(args.checkpoint)
    else:
        info = CheckpointManager(run_dir / "checkpoints", keep_last=None).latest_valid()
        if info is None:
            raise BadInput(f"trainforge export: no valid checkpoint in {run_dir / 'checkpoints'}")
        checkpoint = Path(info.path)
    model = build_parts(cfg).model
    convert_from_config(model, cfg.bitnet)
    weights = {k: v for k, v in load_checkpoint(checkpoint)["model"].items() if not k.startswith(LOSS_MODULE + ".")}
    model.load_state_dict(weights)
    sizes = export_bitnet(model.eval(), args.bitnet)
    print(f"exported {checkpoint} -> {sizes.path}")
    for line in sizes.lines():
        print("  " + line)
    return EXIT_OK


def _has_checkpoints(run_dir: Path) -> bool:
    directory = run_dir / "checkpoints"
    return directory.is_dir() and any(not p.name.startswith(".") for p in directory.iterdir())


def _run_config_dict(run_dir: Path) -> dict[str, Any]:
    import yaml
    path = run_dir / "config.yaml"
    try:
        return yaml.safe_load(path.read_text()) or {} if path.is_file() else {}
    except yaml.YAMLError:
        return {}


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def cmd_config(args: argparse.Namespace) -> int:
    from .config import TrainConfig, annotated_config
    cfg = TrainConfig.from_file(args.config, args.overrides) if args.config else TrainConfig.from_dict({}, args.overrides)
    print(annotated_config(cfg), end="")
    return EXIT_OK


def cmd_lr_find(args: argparse.Namespace) -> int:
    from .lr_find import lr_range_test, plot
    from .run import build_parts, load_config
    cfg = load_config(args.config, args.overrides)
    parts = build_parts(cfg)
    try:
        result = lr_range_test(parts.model, cfg, parts.train_data, task=parts.task, min_lr=args.min_lr,
                               max_lr=args.max_lr, steps=args.steps)
    except ValueError as e:
        raise BadInput(f"trainforge lr-find: {e}") from None
    out = plot(result, args.out)
    if result.suggestion is None:
        print(f"no clear descent in {len(result.lrs)} steps ({result.stopped}); widen --min-lr/--max-lr or "
              f"add --steps. Curve: {out}")
    else:
        print(f"suggested lr: {result.suggestion:.3g} (steepest descent of the loss; {result.stopped}). "
              f"Curve: {out}")
    return EXIT_OK


COMMANDS = {"train": cmd_train, "resume": cmd_resume, "demo": cmd_demo, "report": cmd_report,
            "checkpoints": cmd_checkpoints, "inspect": cmd_inspect, "sample": cmd_sample, "export": cmd_export,
            "lr-find": cmd_lr_find, "config": cmd_config}

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
