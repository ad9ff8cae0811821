"""Selective-Amnesia-format checkpoints in and out: an independent forward of their model
(tests/reference_ddpm.py) agrees with the imported diffusers model, and an unlearned model exports back."""

import pytest
import torch
import yaml
from reference_ddpm import forward as reference_forward
from reference_ddpm import guided, random_state, save_checkpoint

from safemax_ray.core.concat_unet import ConcatClassUNet
from safemax_ray.core.models import load_model
from safemax_ray.core.sa_checkpoint import ReferenceConfig, read_checkpoint
from safemax_ray.drivers.interchange import export_model, import_checkpoint
from safemax_ray.errors import SafemaxError

NARROW = {"ch": 32, "ch_mult": (1, 2, 2, 2), "num_res_blocks": 2, "attn_levels": (1,)}
TIMESTEPS = (0, 1, 500, 999)


def narrow_config(tmp_path) -> str:
    """Their config.yml for the narrow model (other keys are training's and are ignored)."""
    path = tmp_path / "config.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "data": {"dataset": "CIFAR10", "image_size": 32, "channels": 3, "n_classes": 10},
                "model": {
                    "type": "simple",
                    "in_channels": 3,
                    "out_ch": 3,
                    "ch": 32,
                    "ch_mult": [1, 2, 2, 2],
                    "num_res_blocks": 2,
                    "attn_resolutions": [16],
                    "dropout": 0.1,
                    "ema": True,
                    "cond_drop_prob": 0.1,
                },
                "diffusion": {
                    "beta_schedule": "linear",
                    "beta_start": 0.0001,
                    "beta_end": 0.02,
                    "num_diffusion_timesteps": 1000,
                },
                "training": {"batch_size": 128, "n_iters": 800000},
            }
        )
    )
    return str(path)


def _layout(ch):
    return {**NARROW, "ch": ch}


def agreement(model, state, layout) -> float:
    """max |ours - theirs| over conditional, null and guided (w = 2) predictions at TIMESTEPS, float32."""
    reference = {k: v.float() for k, v in state.items()}
    g = torch.Generator().manual_seed(1)
    n = len(TIMESTEPS)
    x = torch.randn(n, 3, 32, 32, generator=g)
    t, c = torch.tensor(TIMESTEPS), torch.tensor([3, 0, 9, 5])
    unet = model.unet.eval()
    layout = {k: layout[k] for k in ("ch_mult", "num_res_blocks", "attn_levels")}
    with torch.no_grad():
        ours_c = unet(x, t, class_labels=c).sample
        ours_null = unet(x, t, class_labels=torch.full((n,), 10)).sample
        theirs_c = reference_forward(reference, x, t, c, torch.zeros(n, dtype=torch.bool), **layout)
        theirs_null = reference_forward(reference, x, t, c, torch.ones(n, dtype=torch.bool), **layout)
        theirs_guided = guided(reference, x, t, c, 2.0, **layout)
    assert theirs_c.abs().max() > 0.1  # a forward that computes something
    return max(
        (ours_c - theirs_c).abs().max().item(),
        (ours_null - theirs_null).abs().max().item(),
        (3 * ours_c - 2 * ours_null - theirs_guided).abs().max().item(),
    )


def test_a_narrow_checkpoint_imports_to_the_same_function(tmp_path):
    state, ema = random_state(0, **_layout(32)), random_state(1, **_layout(32))
    save_checkpoint(tmp_path / "ckpt.pth", state, ema)
    config = ReferenceConfig.from_yaml(narrow_config(tmp_path))
    assert agreement(read_checkpoint(tmp_path / "ckpt.pth", "raw", config), state, _layout(32)) <= 1e-4
    assert agreement(read_checkpoint(tmp_path / "ckpt.pth", "ema", config), ema, _layout(32)) <= 1e-4
    assert agreement(read_checkpoint(tmp_path / "ckpt.pth", "auto", config), ema, _layout(32)) <= 1e-4


@pytest.mark.slow  # 38.6M parameters, random, forwarded on the CPU
def test_a_cifar_width_checkpoint_imports_to_the_same_function(tmp_path):
    state = random_state(0, **_layout(128))
    save_checkpoint(tmp_path / "ckpt.pth", state)  # EMA off, as SalUn's unlearned files
    model = load_model(import_checkpoint(str(tmp_path / "ckpt.pth"), str(tmp_path / "model")))
    assert isinstance(model.unet, ConcatClassUNet) and model.num_classes == 10
    assert sum(p.numel() for p in model.unet.parameters()) == sum(v.numel() for v in state.values())
    assert agreement(model, state, _layout(128)) <= 1e-4


def test_an_imported_model_unlearns_and_exports_back_exactly(tmp_path):
    """Import, fine-tune a few SAFEMax steps (structure kept: nothing is a structural zero), export, and
    the reference forward on the exported file is the unlearned diffusers model."""
    from safemax_ray.config import UnlearnConfig
    from safemax_ray.core.data import ImageData
    from safemax_ray.core.models import save_model
    from safemax_ray.engine.loop import new_session, train

    save_checkpoint(tmp_path / "ckpt.pth", random_state(0, **_layout(32)))
    folder = import_checkpoint(str(tmp_path / "ckpt.pth"), str(tmp_path / "model"), config=narrow_config(tmp_path))
    model = load_model(folder)
    g = torch.Generator().manual_seed(0)
    data = ImageData(torch.rand(40, 3, 32, 32, generator=g) * 2 - 1, torch.arange(40) % 10, [str(i) for i in range(10)])
    session = new_session(
        UnlearnConfig(forget_class=2, iterations=3, batch_size=4, lr=1e-3), model, data, torch.device("cpu")
    )
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    train(session)
    assert any(not torch.equal(before[k], v) for k, v in model.unet.state_dict().items())
    save_model(model, tmp_path / "unlearned")
    export_model(str(tmp_path / "unlearned"), str(tmp_path / "unlearned.pth"))
    saved = torch.load(tmp_path / "unlearned.pth", weights_only=True)
    assert len(saved) == 4 and saved[2] == 0 and set(saved[0]) == {f"module.{k}" for k in saved[3]}
    assert agreement(model, saved[3], _layout(32)) <= 1e-4
    # Import of the export is the model again, weight for weight.
    again = read_checkpoint(tmp_path / "unlearned.pth", "raw", ReferenceConfig.from_yaml(narrow_config(tmp_path)))
    for key, value in model.unet.state_dict().items():
        assert torch.equal(again.unet.state_dict()[key], value), key


def test_the_reference_preset_is_the_reference_model():
    from reference_ddpm import shapes

    from safemax_ray.core.models import build_preset

    model = build_preset("ddpm-cifar10", 10, 3, 32)
    assert isinstance(model.unet, ConcatClassUNet)
    expected = sum(torch.Size(s).numel() for s in shapes(ch=128).values())
    assert sum(p.numel() for p in model.unet.parameters()) == expected == 38_632_323


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda s: {"model": s}, "is a dict .*not Selective Amnesia's list"),
        (lambda s: s, "is a bare state dict"),
        (lambda s: [{f"module.{k}": v for k, v in {**s, "logvar": torch.zeros(1000)}.items()}, {}, 1], "bayesian"),
        (lambda s: [{f"module.{k}": v for k, v in s.items() if k != "conv_out.bias"}, {}, 1], "no key 'conv_out.bias'"),
        (
            lambda s: [{f"module.{k}": v for k, v in {**s, "extra.weight": torch.zeros(1)}.items()}, {}, 1],
            "extra.weight",
        ),
    ],
)
def test_foreign_checkpoints_are_refused_by_name(tmp_path, make, message):
    state = {k: v.float() for k, v in random_state(0, **_layout(32)).items()}
    torch.save(make(state), tmp_path / "ckpt.pth")
    with pytest.raises(SafemaxError, match=message):
        import_checkpoint(str(tmp_path / "ckpt.pth"), str(tmp_path / "out"), config=narrow_config(tmp_path))
    assert not (tmp_path / "out").exists()  # nothing written


def test_mismatches_are_refused_by_name(tmp_path, tiny_assets):
    save_checkpoint(tmp_path / "ckpt.pth", random_state(0, **_layout(32)))  # no EMA shadow
    with pytest.raises(SafemaxError, match="shape .* pass the checkpoint's own config.yml with --config"):
        import_checkpoint(str(tmp_path / "ckpt.pth"), str(tmp_path / "out"))  # CIFAR widths by default
    with pytest.raises(SafemaxError, match="no EMA shadow"):
        import_checkpoint(str(tmp_path / "ckpt.pth"), str(tmp_path / "out"), "ema", narrow_config(tmp_path))
    with pytest.raises(SafemaxError, match="unknown --format 'ldm'"):
        export_model(tiny_assets[0], str(tmp_path / "x.pth"), "ldm")
    with pytest.raises(SafemaxError, match="is not of the reference layout"):
        export_model(tiny_assets[0], str(tmp_path / "x.pth"))
    assert not (tmp_path / "x.pth").exists()
