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
