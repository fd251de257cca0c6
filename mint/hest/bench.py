"""HEST-Bench tasks: which samples each task uses (v1.1.0), and the synthetic look-alikes.

The ids follow the HEST repository's bench configuration (DESIGN.md 6.1). They matter beyond
the benchmark itself: every bench sample is removed from the training set by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mint.errors import MintError


@dataclass(frozen=True)
class BenchTask:
    name: str
    technology: str  # st_technology of its samples
    sample_ids: list[str] = field(default_factory=list)
    n_folds: int = 2


def _ids(prefix: str, lo: int, hi: int, skip: tuple[int, ...] = ()) -> list[str]:
    return [f"{prefix}{i}" for i in range(lo, hi + 1) if i not in skip]


HEST_BENCH_TASKS: dict[str, BenchTask] = {
    t.name: t
    for t in [
        BenchTask("IDC", "Xenium", ["TENX95", "TENX99", "NCBI783", "NCBI785"], 4),
        BenchTask("PRAD", "Visium", _ids("MEND", 139, 162, skip=(155,)), 2),
        BenchTask("PAAD", "Xenium", ["TENX116", "TENX126", "TENX140"], 3),
        BenchTask("SKCM", "Xenium", ["TENX115", "TENX117"], 2),
        BenchTask("COAD", "Xenium", ["TENX111", "TENX147", "TENX148", "TENX149"], 2),
        BenchTask("READ", "Visium", ["ZEN36", "ZEN40", "ZEN48", "ZEN49"], 2),
        BenchTask("CCRCC", "Visium", _ids("INT", 1, 24), 6),
        BenchTask("LUNG", "Xenium", ["TENX118", "TENX141"], 2),
        BenchTask("LYMPH_IDC", "Visium", _ids("NCBI", 681, 684), 4),
        BenchTask("HCC", "Visium", ["NCBI642", "NCBI643"], 2),
    ]
}

# Reported apart, not in the average (as in the HEST README).
AVERAGE_EXCLUDED: set[str] = {"HCC"}

# Synthetic look-alikes (ids are distinct from the synthetic training ids SYNV/SYNST/SYNX).
SYNTHETIC_BENCH_TASKS: dict[str, BenchTask] = {
    t.name: t
    for t in [
        BenchTask("SYNTH_VISIUM", "Visium", ["SYNBV000", "SYNBV001", "SYNBV002", "SYNBV003"], 2),
        BenchTask("SYNTH_XENIUM", "Xenium", ["SYNBX000", "SYNBX001"], 2),
    ]
}


def bench_tasks(source: str) -> dict[str, BenchTask]:
    """The bench tasks of a data source: the ten real ones for hub/local, the synthetic ones otherwise."""
    if source in ("hub", "local", "real"):
        return HEST_BENCH_TASKS
    if source == "synthetic":
        return SYNTHETIC_BENCH_TASKS
    raise MintError(f"unknown source {source!r} (expected hub, local or synthetic)")


def get_task(source: str, name: str) -> BenchTask:
    tasks = bench_tasks(source)
    if name not in tasks:
        raise MintError(
            f"unknown bench task {name!r} for source {source} (known: {', '.join(tasks)})"
        )
    return tasks[name]
