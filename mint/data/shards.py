"""`mint shards`: WebDataset shards, globally shuffled across samples, plus `index.json`.

Order: one seeded permutation over every (sample, row) pair of every tile file, so a shard mixes
all slides and all technologies (a shard per slide would feed the model one slide at a time).
Validation holds whole samples, never tiles of training slides (neighbouring spots of one slide
are nearly the same image, so a tile-level split would give an optimistic held-out loss): per
modality (Visium-like spots, Xenium-like cells) a seeded ``--val-fraction`` of the samples,
rounded, at least one wherever the modality has two or more samples, goes to ``val-*.tar``;
index.json lists them under ``val_samples``. The rest is cut into ``train-*.tar`` shards of
``--samples-per-shard`` tiles in permutation order.

Memory: each tile's image is read by h5 random access (one chunk per patch) in shard order, and
the targets of one shard (already on the vocabulary, float16) are read per sample in row order
beforehand; nothing scales with the dataset. Shards are independent, so ``--workers`` processes
write them in parallel.

Atomicity: each shard is written under a temporary name and renamed when complete; `index.json`
is removed first and written last, so a reader that finds `index.json` finds every shard it
lists, complete. Stale shards of an earlier, larger run, and temporary shards of a killed run,
are deleted.

Verification: `index.json` records each shard's sample count, byte size and SHA-256;
:mod:`mint.data.shard_verify` checks them (``mint shards --verify``, and training before its
first step).

Vocabulary coverage: a sample that measures too few of its modality's vocabulary genes
(default: none at all) would put tiles with all-false masks into training. It stops the run
with an error naming it, or, with `--exclude-low-coverage`, is left out; either way
`qc.tsv` next to the shards lists every sample with its coverage and status.

Sample layout (DESIGN.md section 3): ``__key__`` = ``{sample}_{barcode}``; ``jpg`` 224 x 224 RGB
(4:4:4 chroma, quality Q); ``expr.npy`` float16 ``log1p(counts)`` on the modality's vocabulary
(0 where not measured); ``mask.npy`` bool (genes the sample measured); ``json`` {sample, barcode,
x, y, technology, level, modality, organ, oncotree_code, n_cells} (n_cells -1 for spots).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import re
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mint.data.genes import as_str
from mint.data.shard_verify import file_digest, verify_shards
from mint.data.tiles import TileInfo, read_info
from mint.data.vocab import read_vocab
from mint.errors import MintError
from mint.hest.layout import bench_task_sample_ids
from mint.io import atomic_path, sweep_temps, write_json, write_text

log = logging.getLogger(__name__)

MODALITIES = ("visium", "xenium")
_SHARD_RE = re.compile(r"^(train|val)-\d{6}\.tar$")
_SHARD_TMP_RE = re.compile(r"^\.(train|val)-\d{6}\.[a-z0-9_]{8}\.tmp\.tar$")
#: Per-sample QC table written next to the shards (tab-separated, one row per tile file).
QC_FILE = "qc.tsv"
QC_COLUMNS = (
    "sample",
    "technology",
    "modality",
    "n_tiles",
    "n_genes_measured",
    "vocab_size",
    "vocab_coverage",
    "status",
    "reason",
    "qc_flags",
)


@dataclass
class Source:
    """One tile file as the shard writer sees it."""

    info: TileInfo
    modality: str
    cols: np.ndarray  # vocabulary index of each of the sample's genes (-1 = not in vocabulary)
    mask: np.ndarray  # bool over the vocabulary


def _sources(tiles: list[TileInfo], vocab: dict[str, list[str]]) -> list[Source]:
    out = []
    seen: dict[str, Path] = {}
    for t in tiles:
        if t.sample_id in seen:
            raise MintError(f"{t.sample_id} {t.path}: sample also in {seen[t.sample_id]}")
        seen[t.sample_id] = t.path
        mod = (
            t.modality
            if t.modality in MODALITIES
            else ("xenium" if t.level == "patch" else "visium")
        )
        index = {g: i for i, g in enumerate(vocab[mod])}
        cols = np.array([index.get(g, -1) for g in t.genes], np.int64)
        mask = np.zeros(len(vocab[mod]), bool)
        mask[cols[cols >= 0]] = True
        out.append(Source(info=t, modality=mod, cols=cols, mask=mask))
    return out


def targets_on_vocab(expr: np.ndarray, src: Source, size: int) -> np.ndarray:
    """float16 log1p counts (n, size) on the vocabulary; 0 where the sample has no value."""
    out = np.zeros((len(expr), size), np.float16)
    ok = src.cols >= 0
    out[:, src.cols[ok]] = np.log1p(np.maximum(expr[:, ok], 0).astype(np.float32)).astype(
        np.float16
    )
    return out


def val_sources(groups: list[str], val_fraction: float, seed: int) -> np.ndarray:
    """Indices of the sources held out for validation, whole samples per group (modality).

    In each group of n sources, round(val_fraction * n) are drawn (seeded), at least 1 when
    val_fraction > 0 and n >= 2, and never all n (training keeps every modality).
    """
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for g in sorted(set(groups)):
        members = np.array([i for i, x in enumerate(groups) if x == g], np.int64)
        n = len(members)
        k = int(round(val_fraction * n))
        if val_fraction > 0 and n >= 2:
            k = min(max(k, 1), n - 1)
        else:
            k = 0
        chosen.extend(int(i) for i in members[rng.permutation(n)[:k]])
    return np.array(sorted(chosen), np.int64)


def plan(sizes: list[int], val_fraction: float, seed: int, groups: list[str] | None = None):
    """(train pairs, val pairs) as (K, 2) int64 arrays of (source, row) in shuffled order.

    Validation holds every row of the sources `val_sources` picks (whole samples, per group;
    `groups` None: one group) and no row of any other source.
    """
    total = int(sum(sizes))
    pairs = np.zeros((total, 2), np.int64)
    pairs[:, 0] = np.repeat(np.arange(len(sizes)), sizes)
    pairs[:, 1] = np.concatenate([np.arange(n) for n in sizes]) if sizes else []
    held = val_sources(groups if groups is not None else [""] * len(sizes), val_fraction, seed)
    rng = np.random.default_rng(seed)
    pairs = pairs[rng.permutation(total)]
    is_val = np.isin(pairs[:, 0], held)
    return pairs[~is_val], pairs[is_val]


class _Handles:
    """A few open h5 files (LRU), so hundreds of samples do not exhaust file descriptors."""

    def __init__(self, cap: int = 64):
        import h5py

        self._h5py = h5py
        self.cap = cap
        self.files: OrderedDict[Path, object] = OrderedDict()

    def get(self, path: Path):
        f = self.files.pop(path, None)
        if f is None:
            f = self._h5py.File(path, "r")
            if len(self.files) >= self.cap:
                _, old = self.files.popitem(last=False)
                old.close()
        self.files[path] = f
        return f

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files.clear()


def _encode_jpeg(img: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def write_shard(
    path: Path,
    pairs: np.ndarray,
    sources: list[Source],
    vocab_sizes: dict[str, int],
    quality: int,
) -> dict:
    """Write one shard atomically with the tiles `pairs` in order.

    Returns its index entry: file name, sample count, byte size and SHA-256.
    """
    import webdataset as wds

    handles = _Handles()
    try:
        # Targets and row metadata of this shard, read per sample in row order (h5 fancy
        # indexing wants increasing rows); only the images are read one by one below.
        rowdata: dict[tuple[int, int], tuple] = {}
        for s in np.unique(pairs[:, 0]):
            src = sources[s]
            rows = np.unique(pairs[pairs[:, 0] == s, 1])
            f = handles.get(src.info.path)
            expr = f["expr"][rows] if len(src.info.genes) else np.zeros((len(rows), 0))
            vec = targets_on_vocab(np.asarray(expr), src, vocab_sizes[src.modality])
            barcodes = f["barcode"][rows]
            coords = f["coords"][rows]
            n_cells = f["n_cells"][rows] if "n_cells" in f else np.full(len(rows), -1)
            for k, r in enumerate(rows):
                rowdata[(int(s), int(r))] = (vec[k], as_str(barcodes[k][0]), coords[k], n_cells[k])
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                sink = wds.TarWriter(fh, encoder=False, mtime=0)
                for s, r in pairs:
                    src = sources[s]
                    f = handles.get(src.info.path)
                    vec, barcode, (x, y), n_cells = rowdata[(int(s), int(r))]
                    meta = dict(
                        sample=src.info.sample_id,
                        barcode=barcode,
                        x=int(x),
                        y=int(y),
                        technology=src.info.technology,
                        level=src.info.level,
                        modality=src.modality,
                        organ=src.info.organ,
                        oncotree_code=src.info.oncotree_code,
                        n_cells=int(n_cells),
                    )
                    sink.write(
                        {
                            "__key__": sample_key(src.info.sample_id, barcode),
                            "jpg": _encode_jpeg(f["img"][r], quality),
                            "expr.npy": _npy(vec),
                            "mask.npy": _npy(src.mask),
                            "json": json.dumps(meta).encode(),
                        }
                    )
                sink.close()
            size, digest = file_digest(tmp)
    finally:
        handles.close()
    return {"path": path.name, "n": int(len(pairs)), "bytes": size, "sha256": digest}


def coverage_qc(
    sources: list[Source],
    vocab: dict[str, list[str]],
    min_coverage: float,
    exclude_low: bool,
) -> tuple[list[Source], list[dict]]:
    """(sources kept, one QC row per source): the vocabulary coverage check.

    A sample with tiles that measures none of its modality's vocabulary genes, or less than
    `min_coverage` of them, is an error naming it, unless `exclude_low` leaves it out.
    """
    kept, rows = [], []
    for src in sources:
        size = len(vocab[src.modality])
        measured = int(src.mask.sum())
        frac = measured / size if size else 0.0
        low = src.info.n > 0 and (measured == 0 or frac < min_coverage)
        reason = ""
        if low:
            reason = (
                f"measures {measured} of {size} {src.modality} vocabulary genes "
                f"({frac:.1%} < {min_coverage:.1%})"
                if measured
                else f"measures none of the {size} {src.modality} vocabulary genes"
            )
            if not exclude_low:
                raise MintError(
                    f"{src.info.sample_id} {src.info.path}: {reason}; its tiles would train on "
                    "all-false masks (fix the sample, or set shards.exclude_low_coverage)"
                )
            log.warning("%s: excluded from the shards: %s", src.info.sample_id, reason)
        else:
            kept.append(src)
        rows.append(
            dict(
                sample=src.info.sample_id,
                technology=src.info.technology,
                modality=src.modality,
                n_tiles=int(src.info.n),
                n_genes_measured=measured,
                vocab_size=size,
                vocab_coverage=round(frac, 4),
                status="excluded" if low else "kept",
                reason=reason,
                qc_flags=str(src.info.attrs.get("qc_flags", "") or ""),
            )
        )
    return kept, rows


def qc_table(rows: list[dict]) -> str:
    """The QC rows as tab-separated text (header first; tabs and newlines in values removed)."""
    lines = ["\t".join(QC_COLUMNS)]
    for r in rows:
        lines.append("\t".join(" ".join(str(r.get(c, "")).split()) for c in QC_COLUMNS))
    return "\n".join(lines) + "\n"


def sample_key(sample: str, barcode: str) -> str:
    """WebDataset key; a dot would end the key (start of the extension) so it becomes '_'."""
    return f"{sample}_{barcode}".replace(".", "_").replace("/", "_")


def train_stats(
    sources: list[Source], train: np.ndarray, vocab: dict[str, list[str]], progress: bool
) -> dict:
    """Per-gene mean and std (ddof 0) of the float16 log1p targets over TRAIN tiles, masked."""
    import h5py

    acc = {m: [np.zeros(len(vocab[m])) for _ in range(3)] for m in MODALITIES}
    is_train = [np.zeros(s.info.n, bool) for s in sources]
    for s, r in train:
        is_train[s][r] = True
    for i, src in enumerate(tqdm(sources, desc="target statistics", disable=not progress)):
        rows = np.flatnonzero(is_train[i])
        if not rows.size or not len(src.info.genes):
            continue
        n, s1, s2 = acc[src.modality]
        with h5py.File(src.info.path, "r") as f:
            for a in range(0, rows.size, 4096):
                sel = rows[a : a + 4096]
                chunk = np.asarray(f["expr"][sel[0] : sel[-1] + 1])[sel - sel[0]]
                v = targets_on_vocab(chunk, src, len(vocab[src.modality])).astype(np.float64)
                n += src.mask * len(sel)
                s1 += v.sum(0)
                s2 += (v * v).sum(0)
    stats = {}
    for m in MODALITIES:
        n, s1, s2 = acc[m]
        mean = np.where(n > 0, s1 / np.maximum(n, 1), 0.0)
        std = np.sqrt(np.maximum(np.where(n > 0, s2 / np.maximum(n, 1), 0.0) - mean * mean, 0.0))
        # A gene never measured or constant in training has no scale: 1 leaves it unscaled.
        std = np.where(std > 1e-6, std, 1.0)
        stats[m] = {
            "mean": [round(float(v), 6) for v in mean],
            "std": [round(float(v), 6) for v in std],
            "n": [int(v) for v in n],
        }
    return stats


def bench_dir_sample_ids(bench_dir: Path, tasks: list[str]) -> set[str]:
    """Sample ids of HEST-Bench tasks from their ``adata/`` and ``patches/`` file names."""
    ids: set[str] = set()
    for task in tasks:
        d = bench_dir / task
        if not d.is_dir():
            raise MintError(f"{task} {d}: bench task folder not found")
        ids |= bench_task_sample_ids(d)
    return ids


def _write_one(job) -> dict:
    path, pairs, sources, sizes, quality = job
    return write_shard(path, pairs, sources, sizes, quality)


def write_shards(
    tile_paths: list[Path],
    vocab_dir: Path,
    out_dir: Path,
    samples_per_shard: int,
    val_fraction: float,
    seed: int,
    jpeg_quality: int,
    workers: int = 1,
    exclude: set[str] | None = None,
    progress: bool = True,
    min_coverage: float = 0.0,
    exclude_low_coverage: bool = False,
) -> dict:
    if samples_per_shard < 1:
        raise MintError("--samples-per-shard must be >= 1")
    if not 0 <= val_fraction < 1:
        raise MintError("--val-fraction must be in [0, 1)")
    if not 1 <= jpeg_quality <= 100:
        raise MintError("--jpeg-quality must be in 1..100")
    vocab = read_vocab(vocab_dir)
    tiles = [read_info(p) for p in tile_paths]
    if exclude:
        bad = [t.sample_id for t in tiles if t.sample_id in exclude]
        if bad:
            raise MintError(
                f"{bad[0]} {tiles[0].path.parent}: HEST-Bench sample in the training "
                f"tiles ({len(bad)} in all): it would leak into the benchmark"
            )
    if not 0 <= min_coverage <= 1:
        raise MintError("--min-vocab-coverage must be in [0, 1]")
    sources, qc_rows = coverage_qc(
        _sources(tiles, vocab), vocab, min_coverage, exclude_low_coverage
    )
    train, val = plan(
        [s.info.n for s in sources], val_fraction, seed, [s.modality for s in sources]
    )
    for m in MODALITIES:
        in_mod = [s for s in sources if s.modality == m]
        if val_fraction > 0 and len(in_mod) == 1:
            log.warning(
                "%s: the only %s sample stays in training; no held-out %s slide",
                in_mod[0].info.sample_id,
                m,
                m,
            )
    if len(train) == 0:
        raise MintError(f"shards {out_dir}: no tiles to write")

    out_dir.mkdir(parents=True, exist_ok=True)
    index_path = out_dir / "index.json"
    index_path.unlink(missing_ok=True)  # never leave an index that points at half-new shards
    sweep_temps(out_dir, _SHARD_TMP_RE)  # shards of a killed run
    sizes = {m: len(vocab[m]) for m in MODALITIES}
    jobs = []
    for prefix, pairs in (("train", train), ("val", val)):
        for k, a in enumerate(range(0, len(pairs), samples_per_shard)):
            jobs.append(
                (
                    out_dir / f"{prefix}-{k:06d}.tar",
                    pairs[a : a + samples_per_shard],
                    sources,
                    sizes,
                    jpeg_quality,
                )
            )
    bar = tqdm(total=len(train) + len(val), desc="shards", unit="tile", disable=not progress)
    written: dict[str, dict] = {}
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for entry in pool.map(_write_one, jobs):
                written[entry["path"]] = entry
                bar.update(entry["n"])
    else:
        for job in jobs:
            entry = _write_one(job)
            written[entry["path"]] = entry
            bar.update(entry["n"])
    bar.close()
    names = {j[0].name for j in jobs}
    for p in out_dir.iterdir():  # shards of an earlier, larger run
        if _SHARD_RE.match(p.name) and p.name not in names:
            p.unlink()

    stats = train_stats(sources, train, vocab, progress)
    n_train_by_src = np.bincount(train[:, 0], minlength=len(sources))
    n_val_by_src = (
        np.bincount(val[:, 0], minlength=len(sources)) if len(val) else np.zeros(len(sources), int)
    )
    counts = {m: 0 for m in MODALITIES}
    samples = {}
    for i, src in enumerate(sources):
        counts[src.modality] += int(src.info.n)
        samples[src.info.sample_id] = {
            "n": int(src.info.n),
            "n_train": int(n_train_by_src[i]),
            "n_val": int(n_val_by_src[i]),
            "split": "val" if n_val_by_src[i] else "train",
            "modality": src.modality,
            "technology": src.info.technology,
            "level": src.info.level,
            "organ": src.info.organ,
            "oncotree_code": src.info.oncotree_code,
            "n_genes_measured": int(src.mask.sum()),
        }
    image_sizes = {int(t.attrs.get("patch_size_px", 224)) for t in tiles}
    pixel_sizes = {float(t.attrs.get("target_pixel_size_um", 0.5)) for t in tiles}
    if len(image_sizes) > 1 or len(pixel_sizes) > 1:
        raise MintError(
            f"shards {out_dir}: tiles differ in patch size {image_sizes} or "
            f"pixel size {pixel_sizes}; re-tile them with the same settings"
        )
    index = {
        "version": 1,
        "vocab": vocab,
        "stats": {m: {"mean": stats[m]["mean"], "std": stats[m]["std"]} for m in MODALITIES},
        "stats_n": {m: stats[m]["n"] for m in MODALITIES},
        "counts": counts,
        "n_train": int(len(train)),
        "n_val": int(len(val)),
        "samples": samples,
        "val_samples": sorted(sid for sid, rec in samples.items() if rec["split"] == "val"),
        "shards": [written[j[0].name] for j in jobs if j[0].name.startswith("train")],
        "val_shards": [written[j[0].name] for j in jobs if j[0].name.startswith("val")],
        "excluded": {r["sample"]: r["reason"] for r in qc_rows if r["status"] == "excluded"},
        "qc": QC_FILE,
        "image_size": image_sizes.pop() if image_sizes else 224,
        "pixel_size_um": pixel_sizes.pop() if pixel_sizes else 0.5,
        "seed": int(seed),
        "val_fraction": float(val_fraction),
        "jpeg_quality": int(jpeg_quality),
    }
    write_text(out_dir / QC_FILE, qc_table(qc_rows))
    write_json(index_path, index, indent=1)
    log.info(
        "wrote %d train + %d val tiles in %d shards to %s", len(train), len(val), len(jobs), out_dir
    )
    return index


@dataclass(frozen=True)
class ShardSettings:
    """`mint shards` options and their defaults; config `shards:` maps onto them (mint.settings)."""

    samples_per_shard: int = 2000
    val_fraction: float = 0.02
    seed: int = 0
    jpeg_quality: int = 95
    min_vocab_coverage: float = 0.0
    exclude_low_coverage: bool = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    from mint.settings import add_options

    p.add_argument(
        "--verify",
        type=Path,
        default=None,
        metavar="INDEX",
        help="only check the shards an index.json lists (count, size, SHA-256), then exit",
    )
    p.add_argument("--tiles", nargs="+", type=Path, help="training tile files")
    p.add_argument("--vocab-dir", type=Path, help="folder with visium.txt, xenium.txt")
    p.add_argument("--out-dir", type=Path)
    # --samples-per-shard, --val-fraction, --seed, --jpeg-quality, --min-vocab-coverage,
    # --exclude-low-coverage: ShardSettings (mint.settings)
    add_options(p, "shards")
    p.add_argument("--workers", type=int, default=1, help="shard-writing processes")
    p.add_argument(
        "--bench-dir",
        type=Path,
        default=None,
        help="with --bench-tasks: refuse tiles of HEST-Bench samples (leakage guard)",
    )
    p.add_argument("--bench-tasks", nargs="*", default=[])


def run(args: argparse.Namespace) -> int:
    from mint.logging_utils import progress_enabled

    if args.verify is not None:
        path = args.verify / "index.json" if args.verify.is_dir() else args.verify
        n = verify_shards(path)
        print(f"{path}: {n} shard(s) verified")
        return 0
    for flag in ("tiles", "vocab_dir", "out_dir"):
        if not getattr(args, flag):
            raise MintError(f"shards: --{flag.replace('_', '-')} is required (or use --verify)")

    exclude = None
    if args.bench_dir is not None and args.bench_tasks:
        exclude = bench_dir_sample_ids(args.bench_dir, list(args.bench_tasks))
    write_shards(
        list(args.tiles),
        args.vocab_dir,
        args.out_dir,
        args.samples_per_shard,
        args.val_fraction,
        args.seed,
        args.jpeg_quality,
        max(1, args.workers),
        exclude,
        progress_enabled(),
        args.min_vocab_coverage,
        args.exclude_low_coverage,
    )
    return 0


__all__ = [
    "write_shards",
    "plan",
    "targets_on_vocab",
    "sample_key",
    "bench_dir_sample_ids",
]
