"""Data-parallel training over torch.distributed: process-group set-up (torchrun env vars or `--nproc N` spawning
on loopback), gradient averaging, and `spawn(fn, nproc, args)`, which runs a function in N processes. gloo on CPU,
nccl on CUDA. Nothing here knows about training: normlab.train calls it."""
from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def env_world() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment variables, (0, 0, 1) when absent."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, int(os.environ.get("LOCAL_RANK", str(rank))), world


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init(device: torch.device, timeout_s: float) -> None:
    """Join the process group described by the environment (MASTER_ADDR/PORT, RANK, WORLD_SIZE), once."""
    if dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method="env://", timeout=timedelta(seconds=timeout_s))


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def average_gradients(params: list[torch.nn.Parameter], loss: torch.Tensor, world: int) -> torch.Tensor:
    """All-reduce the mean of every gradient and of the loss in one flat buffer; returns the global mean loss.

    Each rank's loss is the mean over its equal share of the global batch, so the mean over ranks equals the loss
    (and the gradient) of one process on the whole global batch.
    """
    grads = [p.grad for p in params if p.grad is not None]
    dtype = grads[0].dtype if grads else loss.dtype
    flat = torch.cat([g.reshape(-1) for g in grads] + [loss.detach().reshape(1).to(dtype)])
    dist.all_reduce(flat)
    flat.div_(world)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n
    return flat[-1]


def broadcast_model(model: torch.nn.Module) -> None:
    """Start every rank from rank 0's parameters and buffers."""
    for t in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(t.data, src=0)


def _worker(rank: int, fn: Callable[..., Any], world: int, port: int, threads: int, args: tuple,
            env: dict[str, str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), **env)
    # N processes on one machine share its cores: without this each would start a full-size thread pool and they
    # would oversubscribe the CPU (collectives then wait on descheduled peers)
    torch.set_num_threads(max(1, threads // world))
    fn(*args)


def spawn(fn: Callable[..., Any], nproc: int, args: tuple = (), env: dict[str, str] | None = None) -> None:
    """Run fn(*args) in `nproc` fresh processes joined on loopback (MASTER_ADDR/PORT, RANK, LOCAL_RANK, WORLD_SIZE
    set, as torchrun does, plus `env`); returns when all have finished, raises if one fails.

    fn and args must be picklable (fn a module-level function): the processes are started with "spawn". Each
    process gets torch threads = this process's threads // nproc. normlab.train.train spawns itself this way."""
    mp.start_processes(_worker, args=(fn, nproc, free_port(), torch.get_num_threads(), tuple(args), dict(env or {})),
                       nprocs=nproc, join=True, start_method="spawn")
