"""``trainforge train CONFIG --nproc N [--max-restarts K]``: torchrun as a subprocess, exit codes carried back.

torchrun reports any failed worker as its own exit 1, so a preemption (75) or a bad input (2) would
be lost. Each worker therefore records its exit code in a directory the launcher names
(``TRAINFORGE_EXIT_DIR``): ``rank<R>.exit`` holds ``running`` from the start and the code at the
end, so a rank that still says ``running`` after torchrun returned died without exiting (SIGKILL,
the OOM killer, a segfault) and is named. Ranks other than 0 print nothing while they run (DESIGN
invariant 8): their last lines are kept and shown only when the rank failed.
"""

from __future__ import annotations

import collections
import io
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

EXIT_DIR_ENV = "TRAINFORGE_EXIT_DIR"
TAIL_LINES = 40


def restarted() -> bool:
    """torchrun restarted this worker group after a failure (``--max-restarts``): continue the run."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0


def in_worker() -> bool:
    """This process was started by torchrun (directly, or by ``--nproc``)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "TORCHELASTIC_RUN_ID" in os.environ


def worker_argv(argv: Sequence[str]) -> list[str]:
    """The command line each worker runs: the user's, less the launcher's own flags."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--nproc", "--max-restarts"):
            skip = True
            continue
        if a.startswith(("--nproc=", "--max-restarts=")):
            continue
        out.append(a)
    return out


def torchrun_command(argv: Sequence[str], nproc: int, max_restarts: int) -> list[str]:
    # --standalone: a single-node c10d rendezvous on a free port (two jobs on one machine never collide)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            f"--max-restarts={max_restarts}", "-m", "trainforge", *worker_argv(argv)]


def launch(argv: Sequence[str], nproc: int, max_restarts: int) -> int:
    """Run the command under torchrun with ``nproc`` local workers; return the job's exit code."""
    with tempfile.TemporaryDirectory(prefix="trainforge-exit-") as exits:
        env = {**os.environ, EXIT_DIR_ENV: exits}
        # torchrun would set 1 thread per worker with a warning; share the cores out instead
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
        proc = subprocess.Popen(torchrun_command(argv, nproc, max_restarts), env=env)
        previous = {}

        def forward(signum: int, frame: object) -> None:  # preemption reaches the workers through torchrun
            proc.send_signal(signum)

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, forward)
        try:
            rc = proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return outcome(rc, Path(exits), nproc)


def outcome(rc: int, exits: Path, world: int) -> int:
    """The job's exit code from torchrun's and the workers' own; names ranks that died."""
    codes: dict[int, str] = {}
    for r in range(world):
        f = exits / f"rank{r}.exit"
        codes[r] = f.read_text().strip() if f.exists() else "never started"
    if rc == 0 and all(c == "0" for c in codes.values()):
        return 0
    if all(c == "never started" for c in codes.values()):
        print(f"trainforge: torchrun exited {rc} before any worker started (see its messages above)", file=sys.stderr)
        return rc or 1
    dead = [r for r, c in codes.items() if not c.lstrip("-").isdigit()]
    ints = {r: int(c) for r, c in codes.items() if r not in dead}
    for r, code in ints.items():  # a failing rank's own words (rank 0 printed its own already)
        log = exits / f"rank{r}.log"
        if r != 0 and code not in (0, 75) and code != ints.get(0) and log.exists():
            sys.stderr.write("".join(f"[rank {r}] {line}\n" for line in log.read_text().splitlines()))
    if dead:
        states = ", ".join(f"rank {r} ({codes[r]})" for r in dead)
        print(f"trainforge: {states}: died without exiting (killed by a signal such as SIGKILL, the OOM killer, "
              f"or a crash); torchrun stopped the other ranks. The run directory holds the last complete "
              f"checkpoint: continue with `trainforge resume RUN_DIR --nproc {world}` (or pass --max-restarts K "
              "to let torchrun restart the workers by itself)", file=sys.stderr)
        return 1
    if ints.get(0, 0) != 0:
        return ints[0]
    failed = [c for c in ints.values() if c != 0]
    return failed[0] if failed else (rc or 1)


class _Tail(io.TextIOBase):
    """Keeps the last lines written (a rank other than 0 prints nothing unless it fails)."""

    def __init__(self) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._open = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        parts = (self._open + text).split("\n")
        self._open = parts.pop()
        self.lines.extend(parts)
        return len(text)

    def text(self) -> str:
        return "\n".join([*self.lines, self._open]).strip("\n")


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run_worker(main: Callable[[list[str]], int], argv: list[str]) -> int:
    """Run the CLI as one torchrun worker: record the exit code; rank 0 speaks, the others keep
    their last lines and show them only when they fail."""
    rank = int(os.environ.get("RANK", "0"))
    exits = os.environ.get(EXIT_DIR_ENV)
    record = Path(exits) / f"rank{rank}.exit" if exits else None
    if record is not None:
        record.write_text("running\n")
    # torchrun sends SIGTERM to the survivors when a rank dies; outside a fit (whose handler checkpoints)
    # it ends this worker through the normal exit path, so its exit code is still recorded
    signal.signal(signal.SIGTERM, _terminated)
    tail = _Tail() if rank != 0 else None
    saved = sys.stdout, sys.stderr
    if tail is not None:
        import warnings
        warnings.simplefilter("ignore")  # rank 0 says the same
        sys.stdout = sys.stderr = tail
    code = 1
    try:
        code = main(argv)
    finally:
        sys.stdout, sys.stderr = saved
        if tail is not None and code not in (0, 75):
            if exits:
                (Path(exits) / f"rank{rank}.log").write_text(tail.text() + "\n")
            else:
                sys.stderr.write("".join(f"[rank {rank}] {line}\n" for line in tail.text().splitlines()))
        if record is not None:
            record.write_text(f"{code}\n")
    return code
