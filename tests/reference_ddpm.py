"""An independent forward of the field's reference CIFAR-10 DDPM (Selective Amnesia's `Conditional_Model`),
written from its description (NOTES section 3) as plain functions over its own state dict, so that tests
can check our import and export against it without using diffusers or our model classes.

Also writes random weights in their checkpoint layout: a list [state dict with `module.` keys, optimizer
state, step, EMA shadow].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def shapes(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_levels=(1,), in_channels=3, n_classes=10):
    """Every key of their state dict and its shape."""
    temb = 4 * ch
    out = {
        "temb.dense.0.weight": (temb, ch),
        "temb.dense.0.bias": (temb,),
        "temb.dense.1.weight": (temb, temb),
        "temb.dense.1.bias": (temb,),
        "classes_emb.weight": (n_classes, ch),
        "null_classes_emb": (ch,),
        "cemb.dense.0.weight": (temb, ch),
        "cemb.dense.0.bias": (temb,),
        "cemb.dense.1.weight": (temb, temb),
        "cemb.dense.1.bias": (temb,),
        "conv_in.weight": (ch, in_channels, 3, 3),
        "conv_in.bias": (ch,),
    }

    def norm(name, c):
        out[f"{name}.weight"], out[f"{name}.bias"] = (c,), (c,)

    def conv(name, cin, cout, k):
        out[f"{name}.weight"], out[f"{name}.bias"] = (cout, cin, k, k), (cout,)

    def block(name, cin, cout):
        norm(f"{name}.norm1", cin)
        conv(f"{name}.conv1", cin, cout, 3)
        out[f"{name}.temb_cemb_proj.weight"], out[f"{name}.temb_cemb_proj.bias"] = (cout, 2 * temb), (cout,)
        norm(f"{name}.norm2", cout)
        conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cin, cout, 1)

    def attn(name, c):
        norm(f"{name}.norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{part}", c, c, 1)

    levels = len(ch_mult)
    skips, c = [ch], ch
    for i in range(levels):
        for j in range(num_res_blocks):
            block(f"down.{i}.block.{j}", c, ch * ch_mult[i])
            c = ch * ch_mult[i]
            if i in attn_levels:
                attn(f"down.{i}.attn.{j}", c)
            skips.append(c)
        if i != levels - 1:
            conv(f"down.{i}.downsample.conv", c, c, 3)
            skips.append(c)
    block("mid.block_1", c, c)
    attn("mid.attn_1", c)
    block("mid.block_2", c, c)
    for i in reversed(range(levels)):
        for j in range(num_res_blocks + 1):
            block(f"up.{i}.block.{j}", c + skips.pop(), ch * ch_mult[i])
            c = ch * ch_mult[i]
            if i in attn_levels:
                attn(f"up.{i}.attn.{j}", c)
        if i != 0:
            conv(f"up.{i}.upsample.conv", c, c, 3)
    norm("norm_out", c)
    conv("conv_out", c, in_channels, 3)
    return out


def random_state(seed=0, **layout):
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes(**layout).items():
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        scale = 1.0 if key.endswith("emb") or "norm" in key else fan_in**-0.5
        state[key] = torch.randn(shape, generator=g, dtype=torch.float64) * scale
        if "norm" in key and key.endswith(".weight"):
            state[key] = 1 + 0.1 * state[key]
    return state


def save_checkpoint(path, state, ema=None, step=123):
    """Their list layout; the EMA shadow only when given."""
    saved = [{f"module.{k}": v.float() for k, v in state.items()}, {"state": {}, "param_groups": []}, step]
    if ema is not None:
        saved.append({k: v.float() for k, v in ema.items()})
    torch.save(saved, path)


def _swish(x):
    return x * torch.sigmoid(x)


def _norm(sd, name, x):
    return F.group_norm(x, 32, sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-6)


def _conv(sd, name, x, stride=1, padding=1):
    return F.conv2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], stride=stride, padding=padding)


def _linear(sd, name, x):
    return F.linear(x, sd[f"{name}.weight"], sd[f"{name}.bias"])


def _block(sd, name, x, emb):
    h = _conv(sd, f"{name}.conv1", _swish(_norm(sd, f"{name}.norm1", x)))
    h = h + _linear(sd, f"{name}.temb_cemb_proj", _swish(emb))[:, :, None, None]
    h = _conv(sd, f"{name}.conv2", _swish(_norm(sd, f"{name}.norm2", h)))  # dropout: eval mode
    if f"{name}.nin_shortcut.weight" in sd:
        x = _conv(sd, f"{name}.nin_shortcut", x, padding=0)
    return x + h


def _attn(sd, name, x):
    b, c, hgt, wid = x.shape
    h = _norm(sd, f"{name}.norm", x)
    q, k, v = (_conv(sd, f"{name}.{p}", h, padding=0).reshape(b, c, hgt * wid) for p in ("q", "k", "v"))
    weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(c), dim=-1)  # query i, key j
    h = torch.einsum("bij,bcj->bci", weights, v).reshape(b, c, hgt, wid)
    return x + _conv(sd, f"{name}.proj_out", h, padding=0)


def forward(sd, x, t, c, null, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_levels=(1,)):
    """eps(x_t, c, t); rows where `null` is True use the null class embedding instead of class c."""
    ch = sd["conv_in.weight"].shape[0]
    half = ch // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=x.dtype) / (half - 1))
    angles = t.to(x.dtype)[:, None] * freqs[None]
    temb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    temb = _linear(sd, "temb.dense.1", _swish(_linear(sd, "temb.dense.0", temb)))
    cemb = torch.where(null[:, None], sd["null_classes_emb"][None], sd["classes_emb.weight"][c])
    cemb = _linear(sd, "cemb.dense.1", _swish(_linear(sd, "cemb.dense.0", cemb)))
    emb = torch.cat([temb, cemb], dim=1)
    levels = len(ch_mult)
    hs = [_conv(sd, "conv_in", x)]
    for i in range(levels):
        for j in range(num_res_blocks):
            h = _block(sd, f"down.{i}.block.{j}", hs[-1], emb)
            hs.append(_attn(sd, f"down.{i}.attn.{j}", h) if i in attn_levels else h)
        if i != levels - 1:
            hs.append(_conv(sd, f"down.{i}.downsample.conv", F.pad(hs[-1], (0, 1, 0, 1)), stride=2, padding=0))
    h = _block(sd, "mid.block_1", hs[-1], emb)
    h = _block(sd, "mid.block_2", _attn(sd, "mid.attn_1", h), emb)
    for i in reversed(range(levels)):
        for j in range(num_res_blocks + 1):
            h = _block(sd, f"up.{i}.block.{j}", torch.cat([h, hs.pop()], dim=1), emb)
            h = _attn(sd, f"up.{i}.attn.{j}", h) if i in attn_levels else h
        if i != 0:
            h = _conv(sd, f"up.{i}.upsample.conv", F.interpolate(h, scale_factor=2.0, mode="nearest"))
    return _conv(sd, "conv_out", _swish(_norm(sd, "norm_out", h)))


def guided(sd, x, t, c, w=2.0, **layout):
    """Classifier-free guidance as the reference samples: (1 + w) eps(x, c) - w eps(x, null)."""
    n = len(x)
    cond = forward(sd, x, t, c, torch.zeros(n, dtype=torch.bool), **layout)
    null = forward(sd, x, t, c, torch.ones(n, dtype=torch.bool), **layout)
    return (1 + w) * cond - w * null
