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
