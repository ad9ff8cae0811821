"""Model folders: diffusers round trip, the shipped assets, and clear refusals of bad folders."""

import json

import pytest
import torch
from diffusers import DDPMPipeline, UNet2DModel

from safemax_ray.core.classifier import Classifier, ClassifierConfig, load_classifier, save_classifier
from safemax_ray.core.models import (
    SHIPPED_CLASSIFIER,
    SHIPPED_MODEL,
    DiffusionModel,
    build_scheduler,
    build_unet,
    load_model,
    save_model,
)
from safemax_ray.errors import SafemaxError


def tiny(num_classes=10):
    return DiffusionModel(build_unet(num_classes, 1, 8, (8, 16)), build_scheduler(25))


def test_round_trip_is_a_diffusers_pipeline(tmp_path):
    model = tiny()
    save_model(model, tmp_path / "m")
    assert (tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = load_model(tmp_path / "m", num_classes=10, channels=1, image_size=8)
    assert loaded.num_classes == 10 and loaded.null_label == 10 and loaded.num_train_timesteps == 25
    for a, b in zip(model.unet.state_dict().values(), loaded.unet.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    pipe = DDPMPipeline.from_pretrained(tmp_path / "m", local_files_only=True)  # plain diffusers reads it
    assert isinstance(pipe.unet, UNet2DModel)


def test_save_refuses_to_overwrite(tmp_path):
    save_model(tiny(), tmp_path / "m")
    with pytest.raises(SafemaxError, match="already exists"):
        save_model(tiny(), tmp_path / "m")


def test_shipped_assets_load():
    model = load_model(None, num_classes=10, channels=1, image_size=8)
    assert model.num_classes == 10
    assert load_classifier(SHIPPED_CLASSIFIER, num_classes=10).config.num_classes == 10
    assert SHIPPED_MODEL.is_dir()


def test_missing_folder(tmp_path):
    with pytest.raises(SafemaxError, match="does not exist"):
        load_model(tmp_path / "nowhere")


def test_not_a_diffusers_folder(tmp_path):
    (tmp_path / "weights.pt").write_bytes(b"not a model")
    with pytest.raises(SafemaxError, match="not a diffusers model folder"):
        load_model(tmp_path)


def test_unconditional_model_is_refused(tmp_path):
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        norm_num_groups=8,
        down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2,
    )
    DDPMPipeline(unet=unet, scheduler=build_scheduler(25)).save_pretrained(tmp_path / "m")
    with pytest.raises(SafemaxError, match="not class-conditional"):
        load_model(tmp_path / "m")


def test_wrong_class_count_is_refused(tmp_path):
    save_model(tiny(num_classes=5), tmp_path / "m")
    with pytest.raises(SafemaxError, match="6 class embeddings but the data has 10 classes"):
        load_model(tmp_path / "m", num_classes=10)


def test_wrong_image_shape_is_refused(tmp_path):
    save_model(tiny(), tmp_path / "m")
    with pytest.raises(SafemaxError, match="3"):
        load_model(tmp_path / "m", num_classes=10, channels=3)
    with pytest.raises(SafemaxError, match="32px"):
        load_model(tmp_path / "m", num_classes=10, channels=1, image_size=32)


def test_classifier_round_trip_uses_safetensors(tmp_path):
    model = Classifier(ClassifierConfig(1, 10, 8, width=8, feature_dim=16))
    save_classifier(model, tmp_path / "c")
    assert json.loads((tmp_path / "c" / "config.json").read_text())["feature_dim"] == 16
    loaded = load_classifier(tmp_path / "c")
    x = torch.randn(3, 1, 8, 8)
    assert torch.allclose(model.eval()(x), loaded(x))
    with pytest.raises(SafemaxError, match="knows 10 classes but the data has 3"):
        load_classifier(tmp_path / "c", num_classes=3)


def _image_folder(root, classes=3, per_class=4, size=32):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = (torch.rand((size, size, 3), generator=g) * 255).byte().numpy()
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


def test_pretrain_reference_preset_makes_the_reference_model_that_unlearn_accepts(tmp_path):
    """`pretrain --arch ddpm-cifar10` on a 32x32 ImageFolder: the reference layout (38.6M parameters with
    CIFAR-10's classes), recorded in the folder, accepted by preflight and trained for two steps."""
    from safemax_ray.cli import main
    from safemax_ray.config import EvalConfig, UnlearnConfig
    from safemax_ray.core.models import PRESET_FILE
    from safemax_ray.drivers.preflight import preflight
    from safemax_ray.engine.loop import open_session, train

    data = _image_folder(tmp_path / "images")
    flags = ["--dataset", "imagefolder", "--data-root", str(data), "--arch", "ddpm-cifar10", "--steps", "1"]
    flags += ["--classifier-steps", "1", "--batch-size", "2", "--output", str(tmp_path / "out"), "--device", "cpu"]
    assert main(["pretrain", *flags]) == 0
    model = load_model(tmp_path / "out" / "model")
    # 38,632,323 with CIFAR-10's 10 classes (tests/test_sa_checkpoint.py); here 3: 7 class vectors (of 128) fewer.
    assert sum(p.numel() for p in model.unet.parameters()) == 38_632_323 - 7 * 128
    assert model.num_train_timesteps == 1000
    assert json.loads((tmp_path / "out" / "model" / PRESET_FILE).read_text()) == {"arch": "ddpm-cifar10"}
    cfg = UnlearnConfig(
        dataset="imagefolder",
        data_root=str(data),
        model=str(tmp_path / "out" / "model"),
        classifier=str(tmp_path / "out" / "classifier"),
        iterations=2,
        batch_size=2,
        results_dir=str(tmp_path / "results"),
        eval=EvalConfig(n_forget_samples=2, n_retain_per_class=2, sample_steps=2),
    )
    session = open_session(preflight(cfg), torch.device("cpu"))
    train(session)
    assert session.state.step == 2


def test_unknown_preset_is_refused(capsys, tmp_path):
    from safemax_ray.core.models import build_preset

    with pytest.raises(SafemaxError, match="unknown --arch 'big'.*ddpm-cifar10"):
        build_preset("big", 10, 3, 32)
    with pytest.raises(SafemaxError, match="give 4 block widths"):
        build_preset("ddpm-cifar10", 10, 3, 32, widths=(8, 16))
