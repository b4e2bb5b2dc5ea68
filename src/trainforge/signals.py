"""Signal handlers for a run: they only set flags; the loop acts at the next step boundary.

Saving inside a handler can deadlock (Lightning #21406), so SIGTERM/SIGINT request a checkpoint
and exit 75; a second SIGINT exits at once (the last complete checkpoint stays valid).
SIGUSR1 pauses and SIGUSR2 resumes.
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


@contextlib.contextmanager
def handlers(trainer: "Trainer") -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signals can only be handled in the main thread; the run still works without them
        return

    def preempt(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if trainer.preemption_requested and signum == signal.SIGINT:
            sys.stderr.write("\ntrainforge: second interrupt, exiting now; the last complete checkpoint stays valid\n")
            os._exit(130)
        trainer.request_preemption(name)
        sys.stderr.write(f"\ntrainforge: {name} received, checkpointing at the next step boundary "
                         "(interrupt again to exit at once)\n")

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
