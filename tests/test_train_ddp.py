"""Two processes (gloo, CPU): DDP gradients match one process; the data split and the stop
decision are consistent across processes."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import webdataset as wds
from helpers import TINY_MODEL

from mint.models.backbones import build_backbone
from mint.train.augment import MultiCrop
from mint.train.config import TrainConfig
from mint.train.data import TrainStream, in_order, make_loader, read_index
from mint.train.distributed import cleanup, init_distributed
from mint.train.preempt import StopSignals
from mint.train.toy import write_toy_shards
from mint.train.trainer import MintTrainer

PARAMS = {
    **TINY_MODEL,
    "global_crop_size": 32,
    "n_local_crops": 2,
    "num_workers": 0,
}
VOCAB = {"visium": 6, "xenium": 4}


def make_global_batch(b: int = 8) -> dict:
    g = torch.Generator().manual_seed(7)
    batch = {
        "global": torch.randint(0, 256, (b, 2, 3, 32, 32), dtype=torch.uint8, generator=g),
        "local": torch.randint(0, 256, (b, 2, 3, 16, 16), dtype=torch.uint8, generator=g),
        "targets": {m: torch.randn(b, n, generator=g) for m, n in VOCAB.items()},
        "masks": {m: torch.zeros(b, n, dtype=torch.bool) for m, n in VOCAB.items()},
    }
    # first half: mostly visium with full masks; second half: xenium with sparse masks, so the
    # halves hold different numbers of measured genes (tests the global normalisation)
    for i in range(b):
        if i < b // 2 or i == b - 1:
            batch["masks"]["visium"][i] = True
        else:
            batch["masks"]["xenium"][i, : 1 + i % 3] = True
    return batch


def half(batch: dict, rank: int, world: int) -> dict:
    b = batch["global"].shape[0] // world
    sl = slice(rank * b, (rank + 1) * b)
    return {
        "global": batch["global"][sl],
        "local": batch["local"][sl],
        "targets": {m: t[sl] for m, t in batch["targets"].items()},
        "masks": {m: t[sl] for m, t in batch["masks"].items()},
    }


def grads_of(trainer: MintTrainer, batch: dict) -> dict[str, torch.Tensor]:
    total, _ = trainer.forward_losses(batch, step=0)
    total.backward()
    return {n: p.grad.clone() for n, p in trainer.student.named_parameters() if p.grad is not None}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    assert ctx.world_size == world and ctx.rank == rank
    cfg = TrainConfig.from_dict(PARAMS)
    trainer = MintTrainer(cfg, VOCAB, vit=build_backbone("tiny-vit", pretrained=False, tiny=True))
    trainer.wrap_ddp()
    grads = grads_of(trainer, half(make_global_batch(), rank, world))
    if rank == 0:
        torch.save(grads, out)
    cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_one_process(tmp_path):
    torch.set_num_threads(1)
    cfg = TrainConfig.from_dict(PARAMS)
    single = MintTrainer(cfg, VOCAB, vit=build_backbone("tiny-vit", pretrained=False, tiny=True))
    want = grads_of(single, make_global_batch())
    out = str(tmp_path / "grads.pt")
    mp.start_processes(_worker, args=(2, _free_port(), out), nprocs=2, start_method="spawn")
    got = torch.load(out, weights_only=True)
    assert got.keys() == want.keys()
    assert "backbone.st_token" in got and "dino_head.prototypes" in got
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-6, msg=k)


# -- data split and stop agreement across processes ------------------------------------------
STREAM_BATCH = 5
STREAM_WORKERS = 2


def _stream_worker(rank: int, world: int, port: int, indexes: dict[str, str], out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    # a spawned process would spawn its DataLoader workers too (seconds each); torchrun's
    # processes fork them, like this
    multiprocessing.set_start_method("fork", force=True)
    init_distributed("cpu")
    crops = MultiCrop(32, 16, n_global=1, n_local=0)
    res: dict[str, object] = {}
    for name, path in indexes.items():
        index = read_index(path)
        # 40 tiles over 2 processes x 2 workers: 10 per data unit, so 2 batches of 5 per worker
        # and 4 per process make exactly one epoch
        stream = TrainStream(index, crops, STREAM_BATCH, seed=1, shuffle_buffer=4)
        it = in_order(make_loader(stream, STREAM_WORKERS))
        res[name] = [k for _ in range(4) for k in next(it)["keys"]]
        del it
    stop = StopSignals()  # only rank 1 is "signalled"; both must decide to stop
    stop.setup_group()
    if rank == 1:
        stop.signum = int(signal.SIGTERM)
    res["stop"] = stop.requested()
    Path(out, f"rank{rank}.json").write_text(json.dumps(res))
    cleanup()


@pytest.fixture(scope="module")
def split_indexes(tmp_path_factory) -> dict[str, str]:
    """Two layouts of 40 tiles: 4 shards (split by shard) and 1 shard (split by sample)."""
    root = tmp_path_factory.mktemp("split")
    return {
        name: str(write_toy_shards(root / name, 40, 4, samples_per_shard=per, image_size=32))
        for name, per in (("by_shard", 10), ("by_sample", 40))
    }


def test_processes_get_disjoint_samples_covering_one_epoch(split_indexes, tmp_path):
    mp.start_processes(
        _stream_worker,
        args=(2, _free_port(), split_indexes, str(tmp_path)),
        nprocs=2,
        start_method="spawn",
    )
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    for name, path in split_indexes.items():
        index = read_index(path)
        raw = wds.tarfile_to_samples()(iter([{"url": s.path} for s in index.shards]))
        every = {r["__key__"] for r in raw}
        assert len(every) == index.n_train == 40
        a, b = r0[name], r1[name]
        assert len(a) == len(set(a)) == 20 and len(b) == len(set(b)) == 20, name
        assert not set(a) & set(b), name
        assert set(a) | set(b) == every, name
    assert r0["stop"] == r1["stop"] == int(signal.SIGTERM)
