"""A workload installed from outside the package, through the `safemax_ray.workloads` entry-point group,
runs through `unlearn` with its own flag, its own row column and its own data, and no other change
(beside an installed method: tests/test_registry.py's)."""

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from safemax_ray.engine.workloads import ENTRY_POINT_GROUP, available_workloads, workload_class
from safemax_ray.errors import SafemaxError

PLUGIN = '''
from dataclasses import dataclass
from typing import ClassVar

from safemax_ray.core.data import ImageData
from safemax_ray.engine.workloads.classes import ClassWorkload
from safemax_ray.engine.workloads.settings import WorkloadSettings
from safemax_ray.errors import SafemaxError
from safemax_ray.schema import setting


@dataclass
class MirrorSettings(WorkloadSettings):
    """Classes of the dataset, its images mirrored."""

    axis: str = setting("width", "mirror along width or height", "--mirror-axis")

    def validate(self):
        if self.axis not in ("width", "height"):
            raise SafemaxError(f"mirror axis must be width or height, got {self.axis!r}")


class MirroredClasses(ClassWorkload):
    Settings = MirrorSettings
    row_columns: ClassVar[dict[str, type]] = {"mirror_axis": str}

    def load_data(self):
        data = super().load_data()
        dim = -1 if self.settings.axis == "width" else -2
        return ImageData(data.images.flip(dim), data.labels, data.class_names)

    def describe(self):
        return f"mirrored class {self.forget_label()}"

    def row_fields(self, metrics):
        return {"mirror_axis": self.settings.axis}


class NotAWorkload:
    pass
'''


@pytest.fixture
def mirror_plugin(tmp_path, monkeypatch):
    (tmp_path / "mirror_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "mirror_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mirror-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nmirror = mirror_plugin:MirroredClasses\nbroken = mirror_plugin:NotAWorkload\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    workload_class.cache_clear()
    sys.modules.pop("mirror_plugin", None)


def test_an_installed_workload_is_found_by_name_and_a_class_that_is_not_one_is_refused(mirror_plugin):
    assert {"classes", "concept", "dit", "mirror"} <= set(available_workloads())
    assert workload_class("mirror").__name__ == "MirroredClasses"
    with pytest.raises(SafemaxError, match="is not a Workload subclass"):
        workload_class("broken")
    with pytest.raises(SafemaxError, match="unknown workload 'nope'; available: broken, classes"):
        workload_class("nope")


def test_an_installed_workloads_flag_chooses_it_and_its_settings_are_checked_before_ray(mirror_plugin, capsys):
    from safemax_ray.cli import main

    assert main(["unlearn", "--mirror-axis", "diagonal", "--results-dir", str(mirror_plugin / "r")]) == 2
    assert "mirror axis must be width or height, got 'diagonal'" in capsys.readouterr().out
    assert not (mirror_plugin / "r").exists()  # refused before anything was written


@pytest.mark.slow  # the CLI in its own interpreter, a driver on the tests' Ray
def test_an_installed_workload_and_an_installed_method_run_through_unlearn_together(
    mirror_plugin, tiny_assets, ray_session
):
    """The mirror workload and test_registry's frozen-input method (a set-up and a gradient hook), both
    installed as other packages would be (entry points) in the folder the CLI starts from, which Ray puts
    on its workers' path as it does for any driver: one run of the one on the other, on two workers."""
    import ray
    import torch
    from conftest import tiny_flags
    from test_registry import PLUGIN as METHOD_PLUGIN

    from safemax_ray.core.models import load_model
    from safemax_ray.methods import ENTRY_POINT_GROUP as METHOD_GROUP

    (mirror_plugin / "frozen_plugin.py").write_text(METHOD_PLUGIN)
    dist = mirror_plugin / "frozen_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: frozen-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{METHOD_GROUP}]\nfrozen_input = frozen_plugin:FrozenInputAscent\n")
    results = mirror_plugin / "results"
    command = [sys.executable, "-m", "safemax_ray.cli", "unlearn", "--no-progress", "--forget-class", "2"]
    command += [*tiny_flags(tiny_assets, results), "--mirror-axis", "height", "--num-workers", "2"]
    command += ["--method", "frozen_input", "--frozen", "conv_in"]
    command += ["--address", ray.get_runtime_context().gcs_address]
    done = subprocess.run(command, capture_output=True, text=True, cwd=mirror_plugin, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "frozen_input: forget mirrored class 2" in done.stdout
    (written,) = (results / "runs").glob("*.parquet")
    row = pq.read_table(written).to_pylist()[0]  # read as written: this process knows neither plug-in
    assert (row["workload"], row["mirror_axis"], row["forget_class"]) == ("mirror", "height", 2)
    assert row["concept"] is None  # another workload's column, null in this one's row
    assert (row["method"], row["num_workers"], row["frozen_input_frozen"]) == ("frozen_input", 2, "conv_in")
    assert row["setup_s"] > 0 and json.loads(row["method_options_json"]) == {"frozen": "conv_in"}
    base, after = load_model(tiny_assets[0]).unet, load_model(row["model_path"]).unet
    for (name, p0), p1 in zip(base.named_parameters(), after.parameters(), strict=True):
        if name.startswith("conv_in"):
            assert torch.equal(p0, p1), name  # masked by the method's hook: not moved
    assert any(not torch.equal(p0, p1) for p0, p1 in zip(base.parameters(), after.parameters(), strict=True))
