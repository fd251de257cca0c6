"""torch.distributed set-up for torchrun, srun (one task per GPU) or a single process.

torchrun (also under `srun ... torchrun` across nodes) sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT. A bare `srun` with one task per GPU sets SLURM_PROCID / SLURM_NTASKS /
SLURM_LOCALID instead; those are mapped onto the torchrun variables (the first node of the job
is the rendezvous host). Without either, training runs in one process. NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _first_slurm_host() -> str | None:
    nodelist = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST")
    if nodelist and shutil.which("scontrol"):
        try:
            out = subprocess.run(
                ["scontrol", "show", "hostnames", nodelist],
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            ).stdout.split()
            if out:
                return out[0]
        except (subprocess.SubprocessError, OSError):
            pass
    return os.environ.get("SLURM_LAUNCH_NODE_IPADDR")


def map_slurm_env() -> None:
    """If launched by srun (one task per process) without torchrun, export torchrun's variables."""
    env = os.environ
    if "RANK" in env or "SLURM_PROCID" not in env:
        return
    ntasks = int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")))
    if ntasks <= 1:
        return
    env["RANK"] = env["SLURM_PROCID"]
    env["WORLD_SIZE"] = str(ntasks)
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    env.setdefault("MASTER_ADDR", _first_slurm_host() or "127.0.0.1")
    job = int(env.get("SLURM_JOB_ID", "0") or 0)
    env.setdefault("MASTER_PORT", str(29500 + job % 1000))


def resolve_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        from mint.errors import MintError

        raise MintError("train --device cuda: no CUDA device is available")
    return torch.device("cuda", local_rank)


def init_distributed(device: str = "auto") -> DistContext:
    map_slurm_env()
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    rank = int(env.get("RANK", "0"))
    local_rank = int(env.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        log.info("process group: %s, rank %d of %d, device %s", backend, rank, world, dev)
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
