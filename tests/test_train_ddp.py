"""Two-process DDP (gloo, CPU) gives the same first-step gradients as one process."""

from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp

from mint.models.backbones import build_backbone
from mint.train.config import TrainConfig
from mint.train.distributed import cleanup, init_distributed
from mint.train.trainer import MintTrainer

PARAMS = {
    "backbone": "tiny-vit",
    "batch_size": 4,
    "global_crop_size": 32,
    "n_local_crops": 2,
    "dino_prototypes": 16,
    "dino_hidden_dim": 16,
    "dino_bottleneck_dim": 8,
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
