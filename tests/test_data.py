"""Datasets: digits, CIFAR-10 in both local layouts (made here, tiny), ImageFolder, and the split."""

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from safemax_ray.core.data import load_cifar10, load_dataset, load_digits, load_image_folder
from safemax_ray.errors import SafemaxError


def test_digits_shape_and_range():
    data = load_digits()
    assert data.images.shape == (1797, 1, 8, 8) and data.num_classes == 10
    assert data.images.min() == -1 and data.images.max() == 1
    forget, remain = data.split(3)
    assert len(forget) + len(remain) == 1797
    assert torch.all(data.labels[forget] == 3) and torch.all(data.labels[remain] != 3)


def test_forget_class_outside_the_data_is_refused():
    with pytest.raises(SafemaxError, match="forget class 10 is not in this dataset: its classes are 0..9"):
        load_digits().split(10)


def _cifar_arrays(n=20):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), (np.arange(n) % 10).astype(np.int64)


def test_cifar_binary_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    x, y = _cifar_arrays()
    for i in range(1, 6):
        np.concatenate([y[:, None].astype(np.uint8), x], axis=1).tofile(folder / f"data_batch_{i}.bin")
    data = load_cifar10(tmp_path)
    assert data.images.shape == (100, 3, 32, 32) and data.class_names[0] == "airplane"
    assert data.images[0, 0, 0, 0].item() == pytest.approx(x[0, 0] / 127.5 - 1)


def test_cifar_python_layout_with_safe_unpickling(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    x, y = _cifar_arrays()
    for i in range(1, 6):
        batch = {b"data": x, b"labels": y.tolist(), b"batch_label": b"training batch"}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    data = load_dataset("cifar10", str(tmp_path))
    assert data.images.shape == (100, 3, 32, 32)
    assert data.labels[:10].tolist() == list(range(10))


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):  # os.system, which (unlike print) no library in the test process replaces
            return (os.system, ("echo pwned",))

    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(SafemaxError, match=r"refusing to unpickle (posix|os)\.system"):
        load_cifar10(tmp_path)


def test_missing_cifar_root_is_explained(tmp_path):
    with pytest.raises(SafemaxError, match="cifar-10-batches-py"):
        load_cifar10(tmp_path)


def test_image_folder(tmp_path):
    for name, color in (("cat", 0), ("dog", 255)):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (40, 40), (color, color, color)).save(tmp_path / name / f"{i}.png")
    data = load_image_folder(tmp_path, image_size=16)
    assert data.class_names == ["cat", "dog"] and data.images.shape == (6, 3, 16, 16)
    assert data.images[data.labels == 0].max() == -1 and data.images[data.labels == 1].min() == 1
