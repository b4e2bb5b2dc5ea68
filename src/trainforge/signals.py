"""Signal handlers for a run: they only set flags; the loop acts at the next step boundary.

Saving inside a handler can deadlock (Lightning #21406), so SIGTERM/SIGINT request a checkpoint
and exit 75. The handlers stay installed until that checkpoint is written: schedulers send SIGTERM
more than once, so a second signal is noted (the checkpoint goes on) and only a third exits at
once, saying what is lost (the last complete checkpoint stays valid). SIGUSR1 pauses and SIGUSR2
resumes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer

FORCE_AT = 3  # the signal that exits at once


@contextlib.contextmanager
def handlers(trainer: "Trainer") -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signals can only be handled in the main thread; the run still works without them
        return
    received = [0]

    def preempt(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        received[0] += 1
        if received[0] == 1 or not trainer.preemption_requested:
            trainer.request_preemption(name)
            sys.stderr.write(f"\ntrainforge: {name} received, checkpointing at the next step boundary, then exit 75 "
                             f"(signal {FORCE_AT - 1} more times to exit at once without it)\n")
        elif received[0] < FORCE_AT:
            sys.stderr.write(f"\ntrainforge: {name} received again: noted; the preemption checkpoint goes on "
                             f"(one more signal exits at once, losing it)\n")
        else:
            last = getattr(trainer, "last_checkpoint", None)
            sys.stderr.write(f"\ntrainforge: {name} received {received[0]} times: exiting now WITHOUT the preemption "
                             f"checkpoint; the steps since the last complete checkpoint ({last or 'none'}) are lost\n")
            os._exit(128 + signum)

    wanted = {signal.SIGTERM: preempt, signal.SIGINT: preempt}
    if hasattr(signal, "SIGUSR1"):
        wanted[signal.SIGUSR1] = lambda s, f: trainer.pause()
        wanted[signal.SIGUSR2] = lambda s, f: trainer.unpause()
    previous = {sig: signal.signal(sig, handler) for sig, handler in wanted.items()}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
