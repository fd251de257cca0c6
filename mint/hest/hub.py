"""Fetching from the Hugging Face hub: one retry policy for HEST-1k samples and HEST-Bench tasks.

`snapshot` downloads `allow_patterns` of a dataset repository into a folder, then runs the
caller's check of the result. Failures are retried with exponential back-off, except
`NON_RETRYABLE` errors (no access, wrong repository or revision, missing file on the hub), which
a retry cannot fix. An incomplete download (the check's MintError) is retried; a hub that cannot
be reached ends in a one-line "network error" naming the hints that fix it.

The token comes from the HF_TOKEN environment variable only (False otherwise, which stops
huggingface_hub from falling back to other variables or a cached login); it never appears in
arguments, logs or outputs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from mint.errors import MintError, one_line

log = logging.getLogger(__name__)

_sleep = time.sleep  # replaced in tests
T = TypeVar("T")

#: huggingface_hub errors that a retry cannot fix (by class name: the classes moved between
#: huggingface_hub versions).
NON_RETRYABLE: frozenset[str] = frozenset(
    {
        "GatedRepoError",
        "RepositoryNotFoundError",
        "RevisionNotFoundError",
        "EntryNotFoundError",
    }
)

_NETWORK_ERRORS = {
    "LocalEntryNotFoundError",  # huggingface_hub: hub unreachable and no local copy
    "IncompleteSnapshotError",
    "OfflineModeIsEnabled",
    "ConnectError",
    "ConnectTimeout",
    "ReadTimeout",
    "TimeoutException",
    "ProxyError",
    "ConnectionError",
    "Timeout",
}


def is_retryable(exc: BaseException) -> bool:
    return type(exc).__name__ not in NON_RETRYABLE


def is_network_error(exc: BaseException) -> bool:
    """True when `exc` (or its cause) says the hub could not be reached."""
    while exc is not None:
        if type(exc).__name__ in _NETWORK_ERRORS or isinstance(
            exc, (ConnectionError, TimeoutError)
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class HubUnreachable(Exception):
    """snapshot_download could not reach the hub and returned the local folder as it was."""


@contextlib.contextmanager
def watch_hub_log() -> Iterator[list[str]]:
    """Collect huggingface_hub's warnings during a call.

    Offline, snapshot_download does not raise when `local_dir` already holds files (other
    samples): it logs that the remote repo cannot be accessed and returns. That is a network
    failure, not a missing file, and must be reported as one.
    """
    seen: list[str] = []

    class _Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = _Grab(level=logging.WARNING)
    hub_log = logging.getLogger("huggingface_hub")
    hub_log.addHandler(handler)
    try:
        yield seen
    finally:
        hub_log.removeHandler(handler)


def snapshot(
    name: str,
    repo_id: str,
    out: Path,
    patterns: list[str],
    check: Callable[[], T],
    retries: int = 3,
    backoff_s: float = 10.0,
) -> T:
    """Download `patterns` of dataset `repo_id` into `out`, then return `check()`.

    `name` (sample id or task) starts every message. Waits `backoff_s * 2**(attempt-1)` (at most
    300 s) between attempts.
    """
    import huggingface_hub

    last: Exception | None = None
    for attempt in range(1, max(1, retries) + 1):
        try:
            log.info(
                "%s: snapshot_download %s (attempt %d/%d) %s",
                name,
                repo_id,
                attempt,
                retries,
                patterns,
            )
            with watch_hub_log() as hub_warnings:
                huggingface_hub.snapshot_download(
                    repo_id=repo_id,
                    repo_type="dataset",
                    local_dir=str(out),
                    allow_patterns=patterns,
                    token=os.environ.get("HF_TOKEN") or False,
                )
            unreachable = [m for m in hub_warnings if "cannot be accessed" in m]
            if unreachable:
                raise HubUnreachable(unreachable[0])
            return check()
        except MintError as exc:
            last = exc  # incomplete download: retry
        except Exception as exc:  # noqa: BLE001 - network errors come in many types
            if not is_retryable(exc):
                raise MintError(
                    f"{name} {repo_id}: no access ({type(exc).__name__}); accept the dataset terms "
                    "on huggingface.co and export HF_TOKEN with a read token"
                ) from None
            last = exc
        if attempt < retries:
            wait = min(backoff_s * 2 ** (attempt - 1), 300.0)
            log.warning(
                "%s: download failed (%s: %s); retrying in %.0f s",
                name,
                type(last).__name__,
                one_line(last),
                wait,
            )
            _sleep(wait)
    if isinstance(last, MintError):
        raise last
    if isinstance(last, HubUnreachable) or is_network_error(last):
        raise MintError(
            f"{name} {repo_id}: network error, the hub could not be reached after {retries} "
            f"attempts ({type(last).__name__}: {one_line(last, 200)}); check the connection, "
            "proxy and HF_HUB_OFFLINE"
        )
    raise MintError(
        f"{name} {repo_id}: download failed after {retries} attempts "
        f"({type(last).__name__}: {one_line(last, 200)})"
    )
