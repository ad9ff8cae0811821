"""The plain-torch unlearning step, without Ray: it learns, clips, and its randomness replays on resume."""

import torch

from safemax_ray.config import UnlearnConfig
from safemax_ray.core.data import load_digits, shard
from safemax_ray.core.models import build_scheduler, build_unet
from safemax_ray.methods import get_method
from safemax_ray.ray.worker import draw_batch, step_generator, train_step


def setup(seed=0):
    torch.manual_seed(seed)
    unet = build_unet(10, 1, 8, (8, 16))
    scheduler = build_scheduler(25)
    method = get_method("safemax")(UnlearnConfig(), scheduler)
    return unet, method, torch.optim.Adam(unet.parameters(), lr=1e-3)


def test_steps_lower_the_loss_and_report_stats():
    data = load_digits()
    forget, remain = data.split(0)
    unet, method, opt = setup()
    losses = []
    for step in range(30):
        g = step_generator(0, 0, step)
        stats = train_step(unet, method, opt, draw_batch(data, forget, remain, 16, 0, g), g, 1.0, torch.device("cpu"))
        losses.append(stats["loss"])
        assert set(stats) >= {"loss", "loss_forget", "loss_remain", "grad_norm"}
    assert sum(losses[-5:]) < sum(losses[:5])


def test_same_seed_rank_and_step_replay_the_same_step():
    """What makes a resumed run identical to an uninterrupted one: no RNG state needs saving."""
    data = load_digits()
    forget, remain = data.split(3)
    results = []
    for _ in range(2):
        unet, method, opt = setup()
        g = step_generator(7, 1, 42)
        batch = draw_batch(data, shard(forget, 1, 2), shard(remain, 1, 2), 8, 3, g)
        train_step(unet, method, opt, batch, g, 1.0, torch.device("cpu"))
        results.append(torch.cat([p.detach().flatten() for p in unet.parameters()]))
    assert torch.equal(results[0], results[1])
    assert step_generator(7, 0, 42).initial_seed() != step_generator(7, 1, 42).initial_seed()  # ranks differ
