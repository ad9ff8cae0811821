"""A workload installed from outside the package, through the `safemax_ray.workloads` entry-point group,
runs through `unlearn` with its own flag, its own row column and its own data, and no other change."""

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


@pytest.mark.slow
def test_an_installed_workload_runs_through_unlearn(mirror_plugin, tiny_assets, ray_session):
    import ray
    from conftest import tiny_flags

    results = mirror_plugin / "results"
    command = [sys.executable, "-m", "safemax_ray.cli", "unlearn", "--no-progress", "--forget-class", "2"]
    command += [*tiny_flags(tiny_assets, results), "--mirror-axis", "height"]
    command += ["--address", ray.get_runtime_context().gcs_address]
    done = subprocess.run(command, capture_output=True, text=True, cwd=mirror_plugin, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "safemax: forget mirrored class 2" in done.stdout
    (written,) = (results / "runs").glob("*.parquet")
    row = pq.read_table(written).to_pylist()[0]
    assert (row["workload"], row["mirror_axis"], row["forget_class"]) == ("mirror", "height", 2)
    assert row["concept"] is None  # another workload's column, null in this one's row
