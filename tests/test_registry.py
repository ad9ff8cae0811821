"""The method registry: the built-in method, the decorator, and third-party entry points."""

import sys
import textwrap

import pytest

from safemax_ray.errors import SafemaxError
from safemax_ray.methods import ENTRY_POINT_GROUP, UnlearningMethod, available_methods, get_method, register_method
from safemax_ray.methods.registry import METHODS
from safemax_ray.methods.safemax import SafeMax


def test_safemax_is_registered():
    assert get_method("safemax") is SafeMax
    assert "safemax" in available_methods()


def test_decorator_registers_and_refuses_a_clash():
    @register_method("test_noop")
    class Noop(UnlearningMethod):
        def loss(self, unet, batch, generator):
            raise NotImplementedError

    try:
        assert get_method("test_noop") is Noop
        with pytest.raises(SafemaxError, match="already registered"):

            @register_method("test_noop")
            class Other(UnlearningMethod):
                def loss(self, unet, batch, generator):
                    raise NotImplementedError
    finally:
        METHODS.pop("test_noop", None)


def test_unknown_method_lists_the_available_ones():
    with pytest.raises(SafemaxError, match="unknown unlearning method 'nope'.*safemax"):
        get_method("nope")


@pytest.fixture
def plugin_on_path(tmp_path, monkeypatch):
    """An installed-looking distribution that declares a method in our entry-point group."""
    (tmp_path / "my_unlearning_plugin.py").write_text(
        textwrap.dedent(
            """
            from safemax_ray.methods import UnlearningMethod

            class GradientAscent(UnlearningMethod):
                def loss(self, unet, batch, generator):
                    raise NotImplementedError

            class NotAMethod:
                pass
            """
        )
    )
    dist = tmp_path / "my_unlearning_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-unlearning-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n"
        "gradient_ascent = my_unlearning_plugin:GradientAscent\n"
        "broken = my_unlearning_plugin:NotAMethod\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    METHODS.pop("gradient_ascent", None)
    sys.modules.pop("my_unlearning_plugin", None)


def test_entry_point_method_is_found_and_loaded(plugin_on_path):
    assert "gradient_ascent" in available_methods()
    assert "gradient_ascent" not in METHODS  # loaded lazily, on first use
    cls = get_method("gradient_ascent")
    assert cls.__name__ == "GradientAscent" and issubclass(cls, UnlearningMethod)
    assert METHODS["gradient_ascent"] is cls


def test_entry_point_that_is_not_a_method_is_refused(plugin_on_path):
    with pytest.raises(SafemaxError, match="not an UnlearningMethod"):
        get_method("broken")


# An out-of-tree method, run end to end by tests/test_workload_plugin.py (on the installed toy workload).
PLUGIN = '''
from dataclasses import dataclass

import torch

from safemax_ray.core.diffusion import eps_mse
from safemax_ray.methods import LossOutput, MethodOptions, UnlearningMethod
from safemax_ray.methods.base import option


@dataclass
class FrozenInputOptions(MethodOptions):
    frozen: str = option("conv_in", "parameters whose name starts with this do not move")


class FrozenInputAscent(UnlearningMethod):
    """Out-of-tree test method: a set-up phase that samples the base model, and a gradient hook."""

    Options = FrozenInputOptions

    def setup(self, ctx):
        samples = ctx.sample(torch.full((4,), ctx.forget_classes[0]))  # the base model's own samples
        self.mask = {
            name: torch.zeros_like(p) if name.startswith(self.options.frozen) else torch.ones_like(p)
            for name, p in ctx.unet.named_parameters()
        }
        self.sampled = ctx.all_reduce(torch.tensor(float(len(samples))))

    def loss(self, unet, batch, rng):
        num_t = int(self.scheduler.config.num_train_timesteps)
        eps = rng.normal(batch.x_remain.shape)
        t = rng.integers(num_t, len(batch.x_remain))
        x_t = self.scheduler.add_noise(batch.x_remain, eps, t)
        loss = eps_mse(unet(x_t, t, class_labels=batch.y_remain).sample, eps)
        return LossOutput(loss, {"loss": loss.detach()})

    def after_backward(self, unet):
        module = unet.module if hasattr(unet, "module") else unet
        for name, p in module.named_parameters():
            p.grad.mul_(self.mask[name])

    def state_dict(self):
        return {"mask": self.mask}

    def load_state_dict(self, state):
        self.mask = state["mask"]
'''
