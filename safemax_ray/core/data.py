"""Image datasets held in memory, and the forget/remain split by class.

All datasets come out the same way: float32 images in [-1, 1], NCHW, and int64 labels 0..K-1. Digits
ships inside scikit-learn; CIFAR-10 and ImageFolder trees are read from local files only (nothing is
downloaded). The CIFAR-10 python batches are pickles: they are read with an unpickler that accepts
nothing but plain containers and numpy arrays, so a tampered file cannot run code.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from safemax_ray.errors import SafemaxError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


@dataclass
class ImageData:
    images: torch.Tensor  # (N, C, H, W) float32 in [-1, 1]
    labels: torch.Tensor  # (N,) int64
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    def to(self, device: torch.device | str) -> ImageData:
        return ImageData(self.images.to(device), self.labels.to(device), self.class_names)

    def check_class(self, forget_class: int) -> None:
        if not 0 <= forget_class < self.num_classes:
            raise SafemaxError(
                f"forget class {forget_class} is not in this dataset: its classes are 0..{self.num_classes - 1}"
            )

    def split(self, forget: int | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices of the forget class (or classes) and of every other (remain) class."""
        classes = forget if isinstance(forget, list) else [forget]
        for c in classes:
            self.check_class(c)
        is_forget = torch.isin(self.labels, torch.tensor(classes, device=self.labels.device))
        return is_forget.nonzero().flatten(), (~is_forget).nonzero().flatten()


def load_digits() -> ImageData:
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0 * 2.0 - 1.0
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    return ImageData(images, labels, [str(i) for i in range(10)])


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and numpy arrays; refuses every other global."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # type: ignore[override]
        if (module, name) not in self.ALLOWED:
            raise SafemaxError(f"refusing to unpickle {module}.{name}: not a CIFAR-10 data batch")
        if module.startswith("numpy.core"):
            module = module.replace("numpy.core", "numpy._core")
        return super().find_class(module, name)


def _cifar_from_pickles(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for i in range(1, 6):
        raw = (folder / f"data_batch_{i}").read_bytes()
        batch = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
        xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def _cifar_from_binary(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    records = np.concatenate(
        [np.fromfile(folder / f"data_batch_{i}.bin", dtype=np.uint8).reshape(-1, 3073) for i in range(1, 6)]
    )
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)


def load_cifar10(root: str | Path) -> ImageData:
    """CIFAR-10 training set from a torchvision root (python batches) or the binary release."""
    root = Path(root)
    for candidate, reader in (
        (root / "cifar-10-batches-bin", _cifar_from_binary),
        (root / "cifar-10-batches-py", _cifar_from_pickles),
    ):
        if candidate.is_dir():
            suffix = ".bin" if candidate.name.endswith("bin") else ""
            missing = [
                f"data_batch_{i}{suffix}" for i in range(1, 6) if not (candidate / f"data_batch_{i}{suffix}").is_file()
            ]
            if missing:
                raise SafemaxError(f"{candidate} lacks {', '.join(missing)}: copy the whole CIFAR-10 release there")
            x, y = reader(candidate)
            break
    else:
        raise SafemaxError(
            f"no CIFAR-10 under {root}: expected cifar-10-batches-py/ (torchvision layout) or "
            "cifar-10-batches-bin/ (binary release)"
        )
    images = torch.from_numpy(x).float() / 127.5 - 1.0
    return ImageData(images, torch.from_numpy(y), list(CIFAR10_CLASSES))


def load_image_folder(root: str | Path, image_size: int | None) -> ImageData:
    """An ImageFolder tree (root/<class>/<image>), classes in sorted order, resized square."""
    root = Path(root)
    if not root.is_dir():
        raise SafemaxError(f"ImageFolder root {root} is not a directory")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if len(class_dirs) < 2:
        raise SafemaxError(f"ImageFolder root {root} needs one sub-folder per class (2 or more)")
    images, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        images.append(read_images(class_dir, image_size or 32))
        labels += [label] * len(images[-1])
    return ImageData(torch.cat(images), torch.tensor(labels, dtype=torch.int64), [p.name for p in class_dirs])


def read_images(folder: str | Path, size: int) -> torch.Tensor:
    """Every image file directly in `folder`, in name order, resized square: float32 in [-1, 1], NCHW."""
    from PIL import Image

    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SafemaxError(f"folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    arrays = []
    for path in files:
        with Image.open(path) as img:
            arrays.append(np.asarray(img.convert("RGB").resize((size, size), Image.BICUBIC)))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def load_dataset(name: str, root: str | None = None, image_size: int | None = None) -> ImageData:
    if name == "digits":
        return load_digits()
    if root is None:
        raise SafemaxError(f"dataset {name!r} needs a data root (--data-root)")
    if name == "cifar10":
        return load_cifar10(root)
    if name == "imagefolder":
        return load_image_folder(root, image_size)
    raise SafemaxError(f"unknown dataset {name!r}: use digits, cifar10 or imagefolder")
