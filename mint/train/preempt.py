"""Stop training cleanly on SIGTERM / SIGUSR1: checkpoint at the next step boundary, exit 75.

SLURM sends SIGTERM when it preempts or cancels a job (then SIGKILL after the grace time), and
SIGUSR1 ahead of the time limit when the job asks for it (`--signal=USR1@600`, every process of
the job step); `mint.train.launch` makes torchrun forward both to its workers. Dying mid-step
would lose everything since the last periodic checkpoint, so the handler only records the
request; the loop writes a checkpoint at the next step boundary and raises `Preempted`, rank 0
appends a line to `<out-dir>/preemptions.log`, and `mint train` exits with EXIT_RESUME (75,
EX_TEMPFAIL: "try again"). The non-zero exit makes SLURM's requeue or Snakemake's retry run the
job again, and that run resumes from the checkpoint (identical to an uninterrupted run, since
the checkpoint holds the data position). The workflow reads preemptions.log to tell these
attempts from memory failures, which alone get more memory on retry.

With several processes the signal may reach them at different steps; `requested()` agrees on
the decision with an all-reduce over a gloo group (CPU, so no GPU synchronisation per step), so
that every process stops after the same step and takes part in the checkpoint's collectives.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

from mint.errors import MintError

log = logging.getLogger(__name__)

# sysexits.h EX_TEMPFAIL: the job stopped on purpose after a checkpoint; run it again to resume.
EXIT_RESUME = 75
PREEMPTIONS_LOG = "preemptions.log"

STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s
)


class Preempted(MintError):
    """Training stopped on a signal after writing a checkpoint; a rerun resumes from it."""

    def __init__(self, signum: int, step: int) -> None:
        self.signum = int(signum)
        self.step = int(step)
        name = signal.Signals(self.signum).name
        super().__init__(f"stopped by {name} after step {step}; checkpoint written, rerun resumes")

    @property
    def exit_code(self) -> int:
        """EXIT_RESUME: checkpointed on a signal, to be resumed (not a crash, not a kill)."""
        return EXIT_RESUME


def record_preemption(out_dir: str | os.PathLike, exc: Preempted) -> None:
    """Append one line to `<out_dir>/preemptions.log` (rank 0 only): read by the workflow
    (fewer memory retries) and by `mint.train.launch` (exit code)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    path = Path(out_dir) / PREEMPTIONS_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(f"{signal.Signals(exc.signum).name} step={exc.step}\n")


def preemption_count(out_dir: str | os.PathLike) -> int:
    """How many checkpoint-and-exit stops `out_dir`'s run has recorded."""
    path = Path(out_dir) / PREEMPTIONS_LOG
    return len(path.read_text().splitlines()) if path.is_file() else 0


class StopSignals:
    """Context manager: while active, SIGTERM / SIGUSR1 request a stop instead of killing.

    Handlers can only be installed from the main thread (Python raises otherwise), so in any
    other thread (training started from a worker thread, a notebook's executor) it installs
    nothing and `requested()` is False unless another process asked for the stop. The previous
    handlers are put back on exit. A second signal while a stop is pending runs the previous
    handler at once (default: terminate), so a stuck process can still be killed.

    SLURM signals every process of the step, DataLoader workers included; they ignore it
    (`mint.train.data.make_loader` sets SIG_IGN in each worker, and this handler, inherited by
    forked workers, does nothing outside the process that installed it), because a worker that
    died would make the main process fail at its next batch before it could write the checkpoint.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._group: Any = None
        self._pid = os.getpid()

    def __enter__(self) -> StopSignals:
        self._pid = os.getpid()
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[int(sig)] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)
        self._previous.clear()

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker: the main process decides
            return
        if self.signum is None:
            self.signum = signum
            # logging from a signal handler can deadlock on the handler's lock: write directly
            os.write(
                2,
                f"mint train: {signal.Signals(signum).name} received; checkpointing at the next "
                "step boundary, then exiting\n".encode(),
            )
            return
        old = self._previous.get(signum, signal.SIG_DFL)
        if callable(old):
            old(signum, frame)
        elif old != signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def setup_group(self) -> None:
        """Create the CPU group `requested()` reduces over (collective: every process calls it)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            if dist.get_backend() == "gloo":
                self._group = dist.group.WORLD
            else:
                self._group = dist.new_group(backend="gloo")

    def requested(self) -> int | None:
        """The signal number if any process received a stop signal, else None.

        Collective when `setup_group()` made a group: call it at the same step everywhere.
        """
        if self._group is None:
            return self.signum
        flag = torch.tensor([self.signum or 0], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return int(flag.item()) or None
