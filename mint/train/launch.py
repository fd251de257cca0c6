"""`python -m mint.train.launch [torchrun options] -m mint.cli train ...`: torchrun for SLURM.

The workflow starts multi-process training through this module rather than the bare `torchrun`
command, for three reasons that all come from how SLURM stops a job:

- torchrun forwards only SIGTERM/SIGINT/SIGHUP/SIGQUIT to its workers by default and dies of any
  other signal; SLURM's time-limit warning is SIGUSR1 (`--signal=USR1@600`). This module adds
  SIGUSR1 to `--signals-to-handle`, so the warning reaches every rank even where it does not
  reach them directly (the workers run in their own sessions), and gives them
  `--shutdown-timeout` to write the checkpoint before torchrun's SIGKILL.
- torchrun exits 1 for every failure, a preempted run included. A run that stopped on a signal
  and wrote its checkpoint has appended a line to `<out-dir>/preemptions.log`
  (`mint.train.preempt.record_preemption`); if that file grew during this launch the exit code
  is EXIT_RESUME (75), the same as a single-process `mint train`.
- It runs torchrun's own entry point in this process (the same code as the `torchrun`
  command), found through this Python, so no activated environment or PATH is needed.
"""

from __future__ import annotations

import logging
import sys

from mint.train.preempt import EXIT_RESUME, preemption_count

log = logging.getLogger(__name__)

# Every signal torchrun forwards to its workers; SIGUSR1 is SLURM's time-limit warning.
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
# Seconds torchrun waits for the ranks to checkpoint and exit after forwarding a signal, before
# SIGKILL. Shorter than the profile's 600 s warning, with room for the next step to finish.
SHUTDOWN_TIMEOUT_S = 300


def _value(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def torchrun_args(argv: list[str]) -> list[str]:
    """torchrun's arguments with the forwarded signals and the shutdown timeout added (unless
    given). Only options before `-m` belong to torchrun; the rest is `mint train`'s."""
    head = argv[: argv.index("-m")] if "-m" in argv else argv
    extra = []
    if _value(head, "--signals-to-handle") is None:
        extra.append(f"--signals-to-handle={FORWARDED_SIGNALS}")
    if _value(head, "--shutdown-timeout") is None:
        extra.append(f"--shutdown-timeout={SHUTDOWN_TIMEOUT_S}")
    return extra + argv


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    out_dir = _value(argv, "--out-dir")
    before = preemption_count(out_dir) if out_dir else 0
    from torch.distributed.run import main as torchrun

    try:
        torchrun(torchrun_args(argv))
        rc = 0
    except SystemExit as exc:  # argparse errors
        rc = exc.code if isinstance(exc.code, int) else 1
    except Exception:  # noqa: BLE001 - ChildFailedError / SignalException, reported by torchrun
        rc = 1
    if rc != 0 and out_dir and preemption_count(out_dir) > before:
        print(
            f"mint train: stopped with a checkpoint in {out_dir}; exit {EXIT_RESUME} (resume)",
            file=sys.stderr,
        )
        return EXIT_RESUME
    return rc


if __name__ == "__main__":
    sys.exit(main())
