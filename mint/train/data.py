"""WebDataset input: index.json + tar shards -> batches of crops, standardised targets and masks.

Shard contract (see the team contracts): `__key__` = `{sample}_{barcode}`, `jpg` (224 x 224 RGB),
`expr.npy` (float16 log1p, length of the modality's vocabulary), `mask.npy` (bool, genes the
sample measured), `json` (sample, barcode, modality, ...). index.json holds the vocabularies,
per-gene train statistics and the shard lists (paths relative to its folder).

Training stream (step-based, infinite, resumable):

* each epoch shuffles the shard list with a seed derived from (seed, epoch), then splits it by
  node and by DataLoader worker (`wds.split_by_node`, `wds.split_by_worker`); with fewer shards
  than (processes x workers) it falls back to splitting samples round-robin;
* samples pass through a shuffle buffer seeded by (seed, epoch, unit), refilled every epoch;
* every sample is augmented with a generator seeded by (seed, epoch, unit, position);
* each worker forms whole batches tagged with their global position; the DataLoader takes
  them from workers in turn and `in_order` restores the global order after a resume.

The stream is therefore a pure function of (seed, processes, workers): to resume after `k`
optimiser steps a worker skips the raw samples of the batches it had produced (whole epochs are
skipped arithmetically from index.json counts, the current epoch by reading without decoding).
Exact resume needs the same number of processes and workers as the interrupted run.

Batches mix modalities: `targets[m]` / `masks[m]` are [B, len(vocab[m])] for every modality m,
with all-False mask rows for samples of the other modality.
"""

from __future__ import annotations

import heapq
import io
import json
import logging
import random
import signal
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from mint.errors import MintError
from mint.train.augment import MultiCrop
from mint.train.preempt import STOP_SIGNALS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    path: str
    n: int


@dataclass
class ShardIndex:
    path: Path
    modalities: list[str]
    vocab: dict[str, list[str]]
    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    shards: list[Shard]
    val_shards: list[Shard]
    n_train: int
    n_val: int
    raw: dict[str, Any]

    @property
    def vocab_sizes(self) -> dict[str, int]:
        return {m: len(self.vocab[m]) for m in self.modalities}


def read_index(path: str | Path) -> ShardIndex:
    """Read and check index.json (MintError naming the file and the key at fault)."""
    path = Path(path)
    if not path.is_file():
        raise MintError(f"shards {path}: index.json not found")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MintError(f"shards {path}: not valid JSON ({exc})") from exc
    for key in ("vocab", "stats", "shards"):
        if key not in raw:
            raise MintError(f"shards {path}: missing key {key!r}")
    root = path.parent
    counts = raw.get("counts", {})
    # a modality needs genes and (if the index says how many) training tiles to get a head
    modalities = [m for m in raw["vocab"] if len(raw["vocab"][m]) > 0 and counts.get(m, 1) > 0]
    for m in raw["vocab"]:
        if m not in modalities and raw["vocab"][m]:
            log.warning("shards %s: no training tiles of modality %s; no %s head", path, m, m)
    if not modalities:
        raise MintError(f"shards {path}: no modality has both genes and training tiles")
    mean, std = {}, {}
    for m in modalities:
        st = raw["stats"].get(m)
        n = len(raw["vocab"][m])
        if st is None or len(st.get("mean", [])) != n or len(st.get("std", [])) != n:
            raise MintError(f"shards {path}: stats.{m} must have mean and std of length {n}")
        mean[m] = np.asarray(st["mean"], dtype=np.float32)
        s = np.asarray(st["std"], dtype=np.float32)
        std[m] = np.where(np.isfinite(s) & (s > 1e-6), s, 1.0).astype(np.float32)

    def shard_list(key: str) -> list[Shard]:
        out = []
        for i, s in enumerate(raw.get(key, [])):
            if "path" not in s or "n" not in s:
                raise MintError(f"shards {path}: {key}[{i}] needs 'path' and 'n'")
            p = root / s["path"]
            out.append(Shard(str(p), int(s["n"])))
        return out

    shards = shard_list("shards")
    if not shards or sum(s.n for s in shards) == 0:
        raise MintError(f"shards {path}: no training samples")
    val = shard_list("val_shards")
    for s in shards + val:
        if not Path(s.path).is_file():
            raise MintError(f"shards {path}: shard {s.path} is missing")
    return ShardIndex(
        path=path,
        modalities=modalities,
        vocab={m: list(raw["vocab"][m]) for m in modalities},
        mean=mean,
        std=std,
        shards=shards,
        val_shards=val,
        n_train=sum(s.n for s in shards),
        n_val=sum(s.n for s in val),
        raw=raw,
    )


# -- decoding -------------------------------------------------------------------------------
def decode_image(data: bytes) -> torch.Tensor:
    """JPEG bytes -> uint8 [3, H, W] RGB (Pillow: torchvision's decoders are deprecated)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        arr = np.array(im.convert("RGB"))
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def decode_targets(raw: dict[str, Any], index: ShardIndex) -> dict[str, Any]:
    """Image bytes stay encoded; targets are standardised with the train statistics."""
    url = raw.get("__url__", "?")
    key = raw.get("__key__", "?")
    try:
        meta = json.loads(raw["json"])
        modality = meta["modality"]
        expr = _npy(raw["expr.npy"]).astype(np.float32)
        mask = _npy(raw["mask.npy"]).astype(bool)
        jpg = raw["jpg"]
    except KeyError as exc:
        raise MintError(f"{key} {url}: sample lacks {exc}") from exc
    sample = meta.get("sample", key)
    if modality not in index.vocab:
        raise MintError(f"{sample} {url}: modality {modality!r} has no vocabulary in index.json")
    n = len(index.vocab[modality])
    if expr.shape != (n,) or mask.shape != (n,):
        raise MintError(
            f"{sample} {url}: expr/mask length {expr.shape}/{mask.shape} != vocab[{modality}] ({n})"
        )
    target = (expr - index.mean[modality]) / index.std[modality]
    ok = mask & np.isfinite(target)
    target = np.where(ok, target, 0.0).astype(np.float32)
    return {"key": key, "modality": modality, "target": target, "mask": ok, "jpg": jpg, "url": url}


def collate(samples: list[dict[str, Any]], modalities: list[str], vocab_sizes: dict[str, int]):
    b = len(samples)
    batch: dict[str, Any] = {
        "global": torch.stack([s["global"] for s in samples]),
        "local": torch.stack([s["local"] for s in samples])
        if samples[0]["local"] is not None
        else None,
        "targets": {},
        "masks": {},
        "modality": torch.tensor([modalities.index(s["modality"]) for s in samples]),
        "keys": [s["key"] for s in samples],
    }
    for m in modalities:
        t = np.zeros((b, vocab_sizes[m]), dtype=np.float32)
        k = np.zeros((b, vocab_sizes[m]), dtype=bool)
        for i, s in enumerate(samples):
            if s["modality"] == m:
                t[i] = s["target"]
                k[i] = s["mask"]
        batch["targets"][m] = torch.from_numpy(t)
        batch["masks"][m] = torch.from_numpy(k)
    return batch


# -- streams --------------------------------------------------------------------------------
def _unit() -> tuple[int, int]:
    """(this data unit, number of units) over processes x DataLoader workers."""
    rank, world, worker, n_workers = wds.utils.pytorch_worker_info()
    return rank * n_workers + worker, world * n_workers


def _raw_samples(urls: list[str]) -> Iterator[dict[str, Any]]:
    return wds.tarfile_to_samples()(iter([{"url": u} for u in urls]))


class TrainStream(IterableDataset):
    """Infinite, deterministic, resumable stream of augmented training batches."""

    def __init__(
        self,
        index: ShardIndex,
        crops: MultiCrop,
        batch_size: int,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        start_batch: int = 0,
    ) -> None:
        super().__init__()
        self.index = index
        self.crops = crops
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle_buffer = int(shuffle_buffer)
        self.start_batch = int(start_batch)

    def _epoch_plan(self, epoch: int, unit: int, units: int) -> tuple[list[str], int, bool]:
        shards = list(self.index.shards)
        random.Random(f"mint-shards-{self.seed}-{epoch}").shuffle(shards)
        if len(shards) >= units:
            mine = list(wds.split_by_worker(wds.split_by_node(shards)))
            return [s.path for s in mine], sum(s.n for s in mine), False
        total = sum(s.n for s in shards)
        return [s.path for s in shards], len(range(unit, total, units)), True

    def samples(self, skip: int = 0) -> Iterator[dict[str, Any]]:
        """This unit's infinite sample stream, skipping its first `skip` samples."""
        unit, units = _unit()
        epoch = 0
        while True:
            urls, n_epoch, by_sample = self._epoch_plan(epoch, unit, units)
            if n_epoch == 0:
                raise MintError(
                    f"shards {self.index.path}: data unit {unit} of {units} gets no samples"
                )
            if skip >= n_epoch:  # skip whole epochs without reading them
                skip -= n_epoch
                epoch += 1
                continue
            src = _raw_samples(urls)
            if by_sample:
                src = islice(src, unit, None, units)
            if self.shuffle_buffer > 1:
                rng = random.Random(f"mint-samples-{self.seed}-{epoch}-{unit}")
                src = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(src)
            for i, raw in enumerate(src):
                if i < skip:
                    continue
                s = decode_targets(raw, self.index)
                img = decode_image(s.pop("jpg"))
                rng = np.random.default_rng([self.seed, epoch, unit, i])
                s["global"], s["local"] = self.crops(img, rng)
                yield s
            skip = 0
            epoch += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # batches j < start_batch with j % n_workers == worker came from this worker
        done = max(0, -(-(self.start_batch - worker) // n_workers))
        batch: list[dict[str, Any]] = []
        for s in self.samples(skip=done * self.batch_size):
            batch.append(s)
            if len(batch) == self.batch_size:
                out = collate(batch, self.index.modalities, self.index.vocab_sizes)
                out["index"] = worker + n_workers * done  # position in the global batch order
                yield out
                done += 1
                batch = []


def in_order(batches: Iterable[dict[str, Any]], start: int = 0) -> Iterator[dict[str, Any]]:
    """Yield TrainStream batches by their global `index`, starting at `start`.

    The DataLoader always asks worker 0 first, but after resuming at batch `start` the next
    batch belongs to worker `start % workers`; a buffer of at most `workers` batches restores
    the uninterrupted order.
    """
    heap: list[tuple[int, int, dict[str, Any]]] = []
    expected = start
    for n, b in enumerate(batches):
        if int(b["index"]) < expected or len(heap) > 1024:
            raise RuntimeError(f"data stream out of order: batch {b['index']}, expected {expected}")
        heapq.heappush(heap, (int(b["index"]), n, b))
        while heap and heap[0][0] == expected:
            yield heapq.heappop(heap)[2]
            expected += 1


class ValStream(IterableDataset):
    """Finite pass over the validation shards: whole tiles at the global crop size."""

    def __init__(self, index: ShardIndex, crops: MultiCrop, batch_size: int) -> None:
        super().__init__()
        self.index = index
        self.crops = crops
        self.batch_size = int(batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        unit, units = _unit()
        urls = [s.path for s in self.index.val_shards]
        batch: list[dict[str, Any]] = []
        for raw in islice(_raw_samples(urls), unit, None, units):
            s = decode_targets(raw, self.index)
            s["global"] = self.crops.whole_tile(decode_image(s.pop("jpg")))[None]
            s["local"] = None
            batch.append(s)
            if len(batch) == self.batch_size:
                yield collate(batch, self.index.modalities, self.index.vocab_sizes)
                batch = []
        if batch:
            yield collate(batch, self.index.modalities, self.index.vocab_sizes)


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader worker start: ignore SIGTERM / SIGUSR1.

    SLURM signals every process of the job step, and torch's workers die on a SIGTERM that did
    not come from their parent; the main process would then fail at its next batch instead of
    writing its checkpoint (see mint.train.preempt). The main process ends the workers itself,
    and they exit on their own if it dies.
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def make_loader(dataset: IterableDataset, num_workers: int, pin_memory: bool = False) -> DataLoader:
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs.update(
            prefetch_factor=4, persistent_workers=False, worker_init_fn=_ignore_stop_signals
        )
        # the crops import torchvision lazily; importing it here once lets forked workers
        # inherit it instead of each importing it again (about a second per worker, and the
        # validation loader starts new workers at every validation)
        import torchvision.transforms.v2.functional  # noqa: F401
    return DataLoader(
        dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, **kwargs
    )
