"""SFR-on against its authors' code (`K1nght/Unified-Unlearning-w-Remain-Geometry`, commit 36bb7f6):
the mask as `DDPM/runners/diffusion.py` `generate_fisher` (lines 1210-1345: eval mode, the guided
`mode="test"` output, squared error summed over pixels and averaged over the batch, the gradient clipped
to norm 1 in place, grad^2 / batches for the forget and then the remain loader) and
`DDPM/generate_fisher_mask.py` (lines 38-44: (F_f + 1e-15) / (F_r + 1e-15) >= threshold) compute it;
one iteration as `sfron_forget` (lines 1074-1163 with README's `--method ron --unlearn_loss adaga
--forget_alpha 10 --decay_forget_alpha`: `adaptive_loss` and `cosine_lr_scheduler` of
`DDPM/functions/losses.py`, lines 49-72) runs it. Same weights, batches, noise and timesteps."""

import copy

import torch
from conftest import RecordingRandom

from safemax_ray.core.data import ImageData
from safemax_ray.core.models import build_scheduler, build_unet
from safemax_ray.core.randomness import RankRandom, seeded_generator, step_generator
from safemax_ray.methods import SetupContext, UnlearnBatch, method_options
from safemax_ray.methods.sfron import SFRon

W = 2.0  # their cond_scale


def _setup():
    torch.manual_seed(0)
    unet = build_unet(10, 1, 8, (8, 16)).double()
    g = torch.Generator().manual_seed(1)
    images = torch.rand(60, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    return unet, ImageData(images, torch.arange(60) % 10, [str(i) for i in range(10)])


def _context(unet, data, scheduler, batch_size):
    forget_idx, remain_idx = data.split(3)
    return SetupContext(
        unet=unet, scheduler=scheduler, data=data, forget_idx=forget_idx, remain_idx=remain_idx,
        forget_classes=[3], device=torch.device("cpu"), rank=0, world=1, seed=0, all_reduce=lambda x: x,
        sample=None, cache_dir=None, model_id="m", batch_size=batch_size, null_label=10,
    )  # fmt: skip


def reference_fisher(model, scheduler, data, idx, batch_size):
    """generate_fisher's loop, on the same noise and timesteps (one generator per mini-batch)."""
    abar = scheduler.alphas_cumprod.to(torch.float64)
    model.eval()
    batches = idx.split(batch_size)
    grads = {name: 0 for name, _ in model.named_parameters()}
    for b, batch in enumerate(batches):
        x, c = data.images[batch], data.labels[batch]
        rng = RankRandom(seeded_generator("cpu", 5, 0, b))
        t, e = rng.antithetic(25, len(x)), rng.normal(x.shape)
        a = abar.index_select(0, t).view(-1, 1, 1, 1)
        x = x * a.sqrt() + e * (1.0 - a).sqrt()
        logits = model(x, t, class_labels=c).sample
        null_logits = model(x, t, class_labels=torch.full_like(c, 10)).sample
        output = (1 + W) * logits - W * null_logits
        loss = (e - output).square().sum(dim=(1, 2, 3)).mean(dim=0)
        model.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for name, param in model.named_parameters():
            grads[name] += param.grad.data**2 / len(batches)
    return grads


def test_the_mask_is_their_fisher_ratio():
    unet, data = _setup()
    scheduler = build_scheduler(25)
    method = SFRon(method_options("sfron", {}), scheduler)
    ctx = _context(unet, data, scheduler, batch_size=4)
    reference = copy.deepcopy(unet)
    method.setup(ctx)
    forget = reference_fisher(reference, scheduler, data, ctx.forget_idx, 4)
    remain = reference_fisher(reference, scheduler, data, ctx.remain_idx, 4)
    expected = [(forget[n] + 1e-15) / (remain[n] + 1e-15) >= 1.0 for n, _ in reference.named_parameters()]
    assert all(torch.equal(mine, theirs) for mine, theirs in zip(method.mask, expected, strict=True))
    kept = sum(int(m.sum()) for m in method.mask) / sum(m.numel() for m in method.mask)
    assert 0 < kept < 1  # a real selection, not all or nothing


def reference_iteration(model, optimizer, scheduler, batch, mask, draws, step, n_iters):
    """One iteration of sfron_forget: the adaptive-weighted ascent step (masked, clipped), then the
    remain step on the updated weights."""
    abar = scheduler.alphas_cumprod.to(torch.float64)
    draws = iter(draws)
    alpha = 10.0 * (1 + torch.cos(torch.tensor(torch.pi * step / n_iters, dtype=torch.float64))) / 2

    def noised_loss(x0, y):
        t, e, u = next(draws), next(draws), next(draws)
        c = torch.where(u < 0.1, torch.full_like(y, 10), y)  # their prob_mask_like drop, p = 0.1
        a = abar.index_select(0, t).view(-1, 1, 1, 1)
        output = model(x0 * a.sqrt() + e * (1.0 - a).sqrt(), t, class_labels=c).sample
        return (e - output).square().sum(dim=(1, 2, 3))

    ori_loss = noised_loss(batch.x_forget, batch.y_forget)
    coef = 1 / (torch.pow(ori_loss.detach().clone(), 0.5) + 1e-8)
    forget_loss = alpha * -((coef / coef.sum()) * ori_loss * len(ori_loss)).mean(dim=0)
    optimizer.zero_grad()
    forget_loss.backward()
    for param, keep in zip(model.parameters(), mask, strict=True):
        param.grad *= keep
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    remain_loss = 1.0 * noised_loss(batch.x_remain, batch.y_remain).mean(dim=0)
    optimizer.zero_grad()
    remain_loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


def test_one_iteration_is_theirs_both_steps():
    unet, data = _setup()
    scheduler = build_scheduler(25)
    method = SFRon(method_options("sfron", {}), scheduler)
    ctx = _context(unet, data, scheduler, batch_size=4)
    method.setup(ctx)
    method.attach(data, ctx.forget_idx, ctx.remain_idx, 150)
    method.done = 7  # mid-run: alpha has decayed
    reference = copy.deepcopy(unet)
    g = torch.Generator().manual_seed(5)
    f, r = ctx.forget_idx[torch.randint(6, (4,), generator=g)], ctx.remain_idx[torch.randint(54, (4,), generator=g)]
    batch = UnlearnBatch(data.images[f], data.labels[f], data.images[r], data.labels[r], 10)
    unet.train(), reference.train()

    ours, theirs = torch.optim.Adam(unet.parameters(), lr=1e-3), torch.optim.Adam(reference.parameters(), lr=1e-3)
    rng = RecordingRandom(step_generator(0, 7))
    stats = method.step(unet, ours, batch, rng, 1.0)
    reference_iteration(reference, theirs, scheduler, batch, method.mask, rng.draws, 7, 150)
    for mine, expected in zip(unet.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(mine, expected, rtol=0, atol=1e-6)
    assert method.done == 8 and set(stats) >= {"loss", "loss_forget", "loss_remain", "grad_norm"}
