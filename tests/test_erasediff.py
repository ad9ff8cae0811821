"""EraseDiff against its authors' code: one outer update with the inner passes before it, on a tiny
model, next to a reference written here from `JingWu321/EraseDiff` (`ddpm/runners/diffusion.py`,
`train_ours`, at commit dfc5b21, the paper's variant: lines 736-770 the inner passes over the forget
loader with `torch.rand_like` noise and `loss_registry_conditional(..., cond_drop_prob=0.)`, i.e.
`F.mse_loss` (`ddpm/functions/losses.py`, lines 17-34), then `set_param` back to theta_i; lines 772-850
the outer update `loss_dr + lambda_bome * (loss_du - unl_losses.avg)`, clip 1.0, Adam, `ema_helper.update`).
Same weights, batches, noise and timesteps: every draw our method makes is recorded and fed to the
reference."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import RecordingRandom

from safemax_ray.core.data import ImageData
from safemax_ray.core.models import build_scheduler, build_unet
from safemax_ray.core.randomness import RankRandom, step_generator
from safemax_ray.methods import UnlearnBatch, method_options
from safemax_ray.methods.erasediff import EraseDiff


def _setup():
    torch.manual_seed(0)
    unet = build_unet(10, 1, 8, (8, 16)).double()
    g = torch.Generator().manual_seed(1)
    images = torch.rand(60, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    data = ImageData(images, torch.arange(60) % 10, [str(i) for i in range(10)])
    return unet, data


def reference_round(
    model, optimizer, scheduler, forget_x, forget_y, batch, draws, lam, passes, per_batch, mu, eta=None
):
    """Theirs, on their tensors: the inner passes, theta_i back, one outer update, the EMA."""
    abar = scheduler.alphas_cumprod.to(torch.float64)

    def noised(x0, t, e):
        a = abar.index_select(0, t).view(-1, 1, 1, 1)
        return x0 * a.sqrt() + e * (1.0 - a).sqrt()

    ema = [p.detach().clone() for p in model.parameters()]  # registered from the pretrained weights
    param_i = [p.detach().clone() for p in model.parameters()]
    draws = iter(draws)
    for _ in range(passes):
        order, total, count = next(draws), 0.0, 0
        for idx in order.split(per_batch):
            x0, y = forget_x[idx], forget_y[idx]
            t, u = next(draws), next(draws)
            unl_loss = F.mse_loss(model(noised(x0, t, u), t, class_labels=y).sample, u)
            optimizer.zero_grad()
            unl_loss.backward()
            optimizer.step()
            total, count = total + float(unl_loss.detach()) * len(idx), count + len(idx)
        avg = total / count
    with torch.no_grad():
        for p, v in zip(model.parameters(), param_i, strict=True):
            p.copy_(v)
    t, noise_r, t_u, noise_u = next(draws), next(draws), next(draws), next(draws)
    loss_dr = F.mse_loss(model(noised(batch.x_remain, t, noise_r), t, class_labels=batch.y_remain).sample, noise_r)
    loss_du = F.mse_loss(model(noised(batch.x_forget, t_u, noise_u), t_u, class_labels=batch.y_forget).sample, noise_u)
    loss_q = loss_du - avg
    if eta is not None:  # lambda_bome < 0: the dynamic lambda (lines 806-840)
        params = list(model.parameters())
        q_grads = torch.cat([g.flatten() for g in torch.autograd.grad(loss_q, params, retain_graph=True)])
        dr_grads = torch.cat([g.flatten() for g in torch.autograd.grad(loss_dr, params, retain_graph=True)])
        tmp = torch.sum(dr_grads * q_grads) / (dr_grads.norm() * q_grads.norm() + 1e-8)
        lam = (eta - tmp).detach() if eta > tmp else 0.0
    loss = loss_dr + lam * loss_q
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    with torch.no_grad():
        for shadow, p in zip(ema, model.parameters(), strict=True):
            shadow.copy_((1.0 - mu) * p + mu * shadow)
    return ema


@pytest.mark.parametrize("dynamic", [False, True])
def test_one_outer_update_with_its_inner_passes_is_the_authors(dynamic):
    unet, data = _setup()
    forget_idx, remain_idx = data.split(3)
    scheduler = build_scheduler(25)
    options = method_options(
        "erasediff", {"inner_passes": 2, "erase_lambda": 0.1, "ema_decay": 0.99, "dynamic": dynamic, "eta": 0.5}
    )
    method = EraseDiff(options, scheduler)
    method.attach(data, forget_idx, remain_idx, 4)
    reference = copy.deepcopy(unet)
    per_rank = 4  # 6 forget images: batches of 4 and 2, as a loader without drop_last
    g = torch.Generator().manual_seed(5)
    f, r = (
        forget_idx[torch.randint(6, (per_rank,), generator=g)],
        remain_idx[torch.randint(54, (per_rank,), generator=g)],
    )
    batch = UnlearnBatch(data.images[f], data.labels[f], data.images[r], data.labels[r], 10)

    ours = torch.optim.Adam(unet.parameters(), lr=1e-3)
    rng = RecordingRandom(step_generator(0, 0))
    stats = method.step(unet, ours, batch, rng, 1.0)
    method.finish(unet)  # the EMA weights, which evaluation samples
    assert (float(stats["lambda"]) != pytest.approx(0.1)) if dynamic else float(stats["lambda"]) == pytest.approx(0.1)

    theirs = torch.optim.Adam(reference.parameters(), lr=1e-3)
    forget_x, forget_y = data.images[forget_idx], data.labels[forget_idx]
    eta = 0.5 if dynamic else None
    ema = reference_round(
        reference, theirs, scheduler, forget_x, forget_y, batch, rng.draws, 0.1, 2, per_rank, 0.99, eta
    )
    for mine, expected in zip(unet.parameters(), ema, strict=True):
        torch.testing.assert_close(mine, expected, rtol=0, atol=1e-6)
    assert ours.state_dict()["state"][0]["step"] == theirs.state_dict()["state"][0]["step"] == 5  # 2 x 2 inner + 1
    assert method.done == 1 and abs(method.inner_mean) > 0


def test_rounds_start_every_round_steps_and_the_inner_passes_leave_the_weights():
    unet, data = _setup()
    forget_idx, remain_idx = data.split(3)
    method = EraseDiff(method_options("erasediff", {"round_steps": 2, "inner_passes": 1}), build_scheduler(25))
    method.attach(data, forget_idx, remain_idx, 4)
    optimizer = torch.optim.Adam(unet.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in unet.parameters()]
    method.run_inner_passes(unet, optimizer, 4, RankRandom(step_generator(0, 0)))
    assert all(torch.equal(p, b) for p, b in zip(unet.parameters(), before, strict=True))  # weights back, Adam moved on
    assert optimizer.state_dict()["state"][0]["step"] == 2  # one pass over 6 images in batches of 4
    g = torch.Generator().manual_seed(5)
    f, r = forget_idx[torch.randint(6, (4,), generator=g)], remain_idx[torch.randint(54, (4,), generator=g)]
    batch = UnlearnBatch(data.images[f], data.labels[f], data.images[r], data.labels[r], 10)
    steps = []
    for s in range(4):
        method.step(unet, optimizer, batch, RankRandom(step_generator(0, s)), 1.0)
        steps.append(int(optimizer.state_dict()["state"][0]["step"]))
    assert steps == [5, 6, 9, 10]  # inner passes (2 batches) before updates 0 and 2


def test_the_random_label_variant_targets_the_models_own_prediction_under_one_other_label():
    unet, data = _setup()
    forget_idx, remain_idx = data.split(3)
    method = EraseDiff(method_options("erasediff", {"forget_target": "random_label"}), build_scheduler(25))
    method.attach(data, forget_idx, remain_idx, 4)
    x0, y = data.images[forget_idx[:4]], data.labels[forget_idx[:4]]
    rng = RankRandom(step_generator(0, 0))
    x_t, t, noise = method._noised_forget(x0, rng)
    label = RankRandom(step_generator(0, 0))  # the same draws again, to read the label it picks
    label.antithetic(25, 4), label.normal(x0.shape)
    other = label.shared_integer(9) + 1
    target = method._forget_target(unet, x_t, t, noise, y, rng)
    with torch.no_grad():
        expected = unet(x_t, t, class_labels=torch.full_like(y, other)).sample.float()
    assert 1 <= other <= 9 and torch.equal(target, expected) and not target.requires_grad
