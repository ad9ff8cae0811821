"""The method registry: the built-in method, the decorator, and third-party entry points."""

import json
import sys
import textwrap

import pyarrow.parquet as pq
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


@pytest.mark.slow  # the CLI in its own interpreter, a driver on the tests' Ray
def test_out_of_tree_method_with_setup_and_gradient_hook_runs_end_to_end(tiny_assets, tmp_path, ray_session):
    """Installed as another package would be (an entry point) in the folder the CLI starts from, which Ray
    puts on its workers' path as it does for any driver."""
    import subprocess

    import ray
    import torch
    from conftest import tiny_flags

    from safemax_ray.core.models import load_model
    from safemax_ray.results.parquet import read_dataframe

    (tmp_path / "frozen_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "frozen_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: frozen-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nfrozen_input = frozen_plugin:FrozenInputAscent\n")
    results = tmp_path / "results"
    command = [sys.executable, "-m", "safemax_ray.cli", "unlearn", "--method", "frozen_input", "--no-progress"]
    command += [*tiny_flags(tiny_assets, results), "--frozen", "conv_in", "--num-workers", "2"]
    command += ["--address", ray.get_runtime_context().gcs_address]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    row = read_dataframe(str(results)).iloc[0]
    assert row.method == "frozen_input" and row.setup_s > 0 and row.num_workers == 2
    assert json.loads(row.method_options_json) == {"frozen": "conv_in"}
    # Its option has a typed column of its own in the row it wrote (this process does not know the method,
    # so reading the folder leaves that column out).
    (written,) = (results / "runs").glob("*.parquet")
    assert pq.read_table(written).column("frozen_input_frozen").to_pylist() == ["conv_in"]
    base, after = load_model(tiny_assets[0]).unet, load_model(row.model_path).unet
    for (name, p0), p1 in zip(base.named_parameters(), after.parameters(), strict=True):
        if name.startswith("conv_in"):
            assert torch.equal(p0, p1), name  # masked by the hook: not moved
    assert any(not torch.equal(p0, p1) for p0, p1 in zip(base.parameters(), after.parameters(), strict=True))
