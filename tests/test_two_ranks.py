"""EraseDiff's and SFR-on's updates split over two ranks (DDP over gloo, two processes) end with the
weights of one rank doing the whole batch: EraseDiff's passes over the forget set take equal shares and
all-reduce like any step; SFR-on's Fisher sums whole mini-batches per rank and its adaptive weights are
normalised over the global batch."""

import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# name: (method, options)
METHODS = {
    "erasediff": ("erasediff", {"round_steps": 1, "inner_passes": 1}),
    "erasediff-dynamic": ("erasediff", {"round_steps": 2, "inner_passes": 1, "dynamic": True, "eta": 0.5}),
    "sfron": ("sfron", {}),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(rank: int, world: int, port: int, out: str) -> None:
    """Both methods, one after the other, on one process group; rank 0 saves their weights."""
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    weights = {name: _train(rank, world, name) for name in METHODS}
    if rank == 0:
        torch.save(weights, out)
    if world > 1:
        dist.destroy_process_group()


def _train(rank: int, world: int, name: str) -> list[torch.Tensor]:
    sys.path.insert(0, os.path.dirname(__file__))
    from safemax_ray.core.data import ImageData
    from safemax_ray.core.models import build_scheduler, build_unet
    from safemax_ray.core.randomness import RankRandom, step_generator
    from safemax_ray.engine.step import draw_batch
    from safemax_ray.methods import SetupContext, get_method, method_options

    torch.set_num_threads(1)
    torch.manual_seed(0)
    unet = build_unet(10, 1, 8, (8, 16)).double()
    g = torch.Generator().manual_seed(1)
    data = ImageData(
        torch.rand(60, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1, torch.arange(60) % 10, list("0123456789")
    )
    forget_idx, remain_idx = data.split(3)
    scheduler = build_scheduler(25)
    method, options = METHODS[name]
    m = get_method(method)(method_options(method, options), scheduler)
    m.attach(data, forget_idx, remain_idx, 3)

    def all_reduce(x):
        if world > 1:
            dist.all_reduce(x)
        return x

    ctx = SetupContext(
        unet=unet, scheduler=scheduler, data=data, forget_idx=forget_idx, remain_idx=remain_idx,
        forget_classes=[3], device=torch.device("cpu"), rank=rank, world=world, seed=0, all_reduce=all_reduce,
        sample=None, cache_dir=None, model_id="m", batch_size=4, null_label=10,
    )  # fmt: skip
    m.setup(ctx)
    unet.train()
    model = torch.nn.parallel.DistributedDataParallel(unet) if world > 1 else unet
    optimizer = torch.optim.Adam(unet.parameters(), lr=1e-3)
    for step in range(3):
        rng = RankRandom(step_generator(0, step), rank, world)
        m.step(model, optimizer, draw_batch(data, forget_idx, remain_idx, 8 // world, 10, rng), rng, 1.0)
    m.finish(unet)
    return [p.detach() for p in unet.parameters()]


@pytest.mark.slow  # two fresh interpreters with a process group
def test_two_ranks_train_the_one_rank_model(tmp_path):
    out = str(tmp_path / "two.pt")
    mp.start_processes(_run, args=(2, _free_port(), out), nprocs=2, start_method="spawn")
    two = torch.load(out, weights_only=True)
    for name in METHODS:
        one = _train(0, 1, name)
        for a, b in zip(one, two[name], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)  # reduction order, through Adam
        assert any(not torch.equal(a, b) for a, b in zip(one, _start(), strict=True)), name  # it trained


def _start() -> list[torch.Tensor]:
    from safemax_ray.core.models import build_unet

    torch.manual_seed(0)
    return [p.detach() for p in build_unet(10, 1, 8, (8, 16)).double().parameters()]
