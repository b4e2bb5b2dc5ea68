"""trainforge train | resume | demo | report | checkpoints | inspect | sample.

Exit codes: 0 finished (a gate or early stop is a normal finish), 2 bad input (one message on
stderr), 75 preempted by SIGTERM/SIGINT after writing a checkpoint (``trainforge resume`` continues).
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


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one message, not usage + error
        raise BadInput(f"{self.prog}: {message} (see {self.prog} --help)")


def build_parser() -> Parser:
    p = Parser(prog="trainforge", description="A PyTorch training engine: train, resume and inspect runs.")
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
    t.add_argument("--nproc", type=int, default=1, help="processes per node for distributed training (1: this process)")
    t.add_argument("--resume", action="store_true", help="continue from the run dir's latest checkpoint if there is one")

    r = sub.add_parser("resume", help="continue a run from its latest valid checkpoint",
                       description="Continue a run from its latest valid checkpoint, with the run's own config.yaml. "
                                   "A finished run is left as it is.")
    r.add_argument("run_dir", help="the run directory (holds config.yaml and checkpoints/)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change a resumable setting, e.g. --set max_epochs=20 (differences are reported)")

    d = sub.add_parser("demo", help="run a recipe end to end (default: graph_walks)",
                       description="Run a built-in recipe end to end and write its report.")
    d.add_argument("name", nargs="?", default="graph_walks", help="graph_walks (default), grokking, char_lm or digits")
    overrides(d)

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

    s = sub.add_parser("sample", help="generate text from a trained language-model run",
                       description="Load a run's latest checkpoint and generate text (recipes with a sampler: char_lm).")
    s.add_argument("run_dir", help="the run directory")
    s.add_argument("--prompt", default="\n", help="text to start from (default: a newline)")
    s.add_argument("--tokens", type=int, default=500, help="how many tokens to generate (default 500)")
    s.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default 0.8)")
    s.add_argument("--top-k", type=int, default=200, help="sample from the k most likely tokens (default 200)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .snapshot import ResumeError
    try:
        from .data.readers import DataError
    except ImportError:  # pragma: no cover
        DataError = ValueError  # type: ignore[misc,assignment]
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except BadInput as e:
        return fail(str(e))
    except (ConfigError, CheckpointError, ResumeError, DataError) as e:
        return fail(f"trainforge: {e}")
    except SystemExit as e:  # Preempted, or argparse --help
        message = getattr(e, "message", None)
        if message:
            print(message, file=sys.stderr)
        return int(e.code or 0)
    except KeyboardInterrupt:
        return fail("trainforge: interrupted", EXIT_FAILED)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(message, file=sys.stderr)
    return code


def cmd_train(args: argparse.Namespace) -> int:
    from .run import load_config, run_config
    if args.nproc != 1:
        raise BadInput("trainforge train: --nproc: distributed launch is not available in this version; use --nproc 1")
    cfg = load_config(args.config, args.overrides, args.run_dir)
    if not args.resume and _has_checkpoints(Path(cfg.run_dir)):
        raise BadInput(f"trainforge train: {cfg.run_dir} already holds a run with checkpoints; continue it with "
                       f"`trainforge resume {cfg.run_dir}` (or train --resume), or pass --run-dir for a new run")
    return finish(run_config(cfg, resume=args.resume), cfg)


def cmd_resume(args: argparse.Namespace) -> int:
    from .run import load_config, run_config
    config = Path(args.run_dir) / "config.yaml"
    if not config.is_file():
        raise BadInput(f"trainforge resume: {args.run_dir} is not a run directory (no config.yaml)")
    cfg = load_config(config, args.overrides, args.run_dir)
    return finish(run_config(cfg, resume=True), cfg)


def cmd_demo(args: argparse.Namespace) -> int:
    from .run import resolve_config, run_config
    cfg = resolve_config({"recipe": args.name, "run_dir": f"runs/{args.name}"}, args.overrides, args.run_dir)
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
        raise BadInput(f"trainforge checkpoints: {args.run_dir} does not exist")
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
    payload = load_checkpoint(path)
    meta = payload["meta"]
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
    cfg = load_config(run_dir / "config.yaml", run_dir=str(run_dir))
    recipe = load_recipe(cfg.recipe) if cfg.recipe else None
    if recipe is None or not hasattr(recipe, "sample_text"):
        raise BadInput(f"trainforge sample: the run's recipe ({cfg.recipe}) has no text sampler; char_lm has one")
    info = CheckpointManager(run_dir / "checkpoints", keep_last=None).latest_valid()
    if info is None:
        raise BadInput(f"trainforge sample: no valid checkpoint in {run_dir / 'checkpoints'}")
    parts = recipe.build(cfg)
    from .checkpoint import load_checkpoint
    parts.model.load_state_dict(load_checkpoint(info.path)["model"])
    text = recipe.sample_text(parts.model, cfg, args.prompt, max_new_tokens=args.tokens,
                              temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    print(text)
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


COMMANDS = {"train": cmd_train, "resume": cmd_resume, "demo": cmd_demo, "report": cmd_report,
            "checkpoints": cmd_checkpoints, "inspect": cmd_inspect, "sample": cmd_sample}

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
