"""Two processes, one GPU, NCCL: the all-reduce either works or NCCL names why not."""

import os
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def rank(r: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
    try:
        dist.init_process_group("nccl", rank=r, world_size=2, timeout=timedelta(seconds=60))
        x = torch.ones(4, device="cuda:0")
        dist.all_reduce(x)
        torch.cuda.synchronize()
        print(f"rank {r}: NCCL all-reduce on a shared GPU gave {x[0].item():g}", flush=True)
    except Exception as exc:  # noqa: BLE001
        print(f"rank {r}: NCCL refused: {' '.join(str(exc).split())[:400]}", flush=True)


if __name__ == "__main__":
    mp.start_processes(rank, nprocs=2, start_method="spawn", join=True)
