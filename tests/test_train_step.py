"""The plain-torch unlearning step, without Ray: it learns, and its randomness replays and splits."""

import torch

from safemax_ray.core.data import load_digits
from safemax_ray.core.models import build_scheduler, build_unet
from safemax_ray.core.randomness import RankRandom, step_generator
from safemax_ray.engine.step import draw_batch
from safemax_ray.methods import get_method, method_options


def setup(seed=0):
    torch.manual_seed(seed)
    unet = build_unet(10, 1, 8, (8, 16))
    method = get_method("safemax")(method_options("safemax", {}), build_scheduler(25))
    return unet, method, torch.optim.Adam(unet.parameters(), lr=1e-3)


def test_steps_lower_the_loss_and_report_stats_as_device_tensors():
    data = load_digits()
    forget, remain = data.split(0)
    unet, method, opt = setup()
    losses = []
    for step in range(30):
        rng = RankRandom(step_generator(0, step))
        stats = method.step(unet, opt, draw_batch(data, forget, remain, 16, 10, rng), rng, 1.0)
        assert set(stats) >= {"loss", "loss_forget", "loss_remain", "grad_norm"}
        assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in stats.values())
        losses.append(float(stats["loss"]))
    assert sum(losses[-5:]) < sum(losses[:5])


def test_same_seed_and_step_replay_the_same_step():
    """What makes a resumed run identical to an uninterrupted one: no RNG state needs saving."""
    data = load_digits()
    forget, remain = data.split(3)
    results = []
    for _ in range(2):
        unet, method, opt = setup()
        rng = RankRandom(step_generator(7, 42), 1, 2)
        method.step(unet, opt, draw_batch(data, forget, remain, 8, 10, rng), rng, 1.0)
        results.append(torch.cat([p.detach().flatten() for p in unet.parameters()]))
    assert torch.equal(results[0], results[1])


def test_two_ranks_average_to_the_one_worker_gradient():
    """DDP averages the ranks' gradients; with split-independent draws that is the 1-worker gradient."""
    data = load_digits()
    forget, remain = data.split(2)

    def grads(rank, world):
        unet, method, _ = setup()
        rng = RankRandom(step_generator(0, 9), rank, world)
        batch = draw_batch(data, forget, remain, 16 // world, 10, rng)
        method.loss(unet, batch, rng).loss.backward()
        return torch.cat([p.grad.flatten() for p in unet.parameters()])

    averaged = (grads(0, 2) + grads(1, 2)) / 2
    torch.testing.assert_close(averaged, grads(0, 1), rtol=1e-4, atol=1e-6)


def test_a_method_that_owns_its_step_runs_in_the_engine_unchanged():
    """Two optimiser updates an iteration (SFR-on's shape: a forget step, then a remain step on the
    updated weights): the engine's loop runs them, and the shared Adam counts both."""
    from safemax_ray.config import UnlearnConfig
    from safemax_ray.core.models import DiffusionModel
    from safemax_ray.engine.loop import new_session, train
    from safemax_ray.methods.safemax import SafeMax

    class TwoUpdates(SafeMax):
        def step(self, unet, optimizer, batch, rng, grad_clip):
            first = super().step(unet, optimizer, batch, rng, grad_clip)
            remain_only = type(batch)(batch.x_remain, batch.y_remain, batch.x_remain, batch.y_remain, batch.null_label)
            second = super().step(unet, optimizer, remain_only, rng, grad_clip)
            return {**first, "loss_second": second["loss"]}

    torch.manual_seed(0)
    model = DiffusionModel(build_unet(10, 1, 8, (8, 16)), build_scheduler(25))
    session = new_session(UnlearnConfig(iterations=3, batch_size=8), model, load_digits(), torch.device("cpu"))
    session.method = TwoUpdates(session.method.options, model.scheduler)
    stats = train(session)
    steps = {int(state["step"]) for state in session.optimizer.state.values()}
    assert steps == {6} and session.state.step == 3 and "loss_second" in stats
