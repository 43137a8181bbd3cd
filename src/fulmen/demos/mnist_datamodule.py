"""MNIST from the standard idx files in a local folder, and a data module over it.

The four files are ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
and ``t10k-labels-idx1-ubyte`` (each may also be gzipped, ``.gz``), looked for in ``root``,
``root/MNIST/raw`` (where torchvision puts them) and ``root/MNIST``. Nothing is downloaded.

Example::

    from fulmen.demos.mnist_datamodule import MNISTDataModule

    dm = MNISTDataModule(data_dir="data", batch_size=64)
    fulmen.Trainer(max_epochs=1).fit(model, datamodule=dm)
"""

from __future__ import annotations

import gzip
import math
import os
from typing import Any, Callable

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, random_split

from fulmen.datamodule import LightningDataModule
from fulmen.errors import FulmenError

__all__ = ["MNIST", "MNISTDataModule", "MNISTFilesNotFoundError"]

_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class MNISTFilesNotFoundError(FulmenError, FileNotFoundError):
    """The MNIST idx files are not in the folder given; the message names the files and where they go."""


def _find(root: str, name: str) -> str | None:
    for folder in (root, os.path.join(root, "MNIST", "raw"), os.path.join(root, "MNIST")):
        for candidate in (name, name + ".gz"):
            path = os.path.join(folder, candidate)
            if os.path.isfile(path):
                return path
    return None


def _read_idx(path: str) -> Tensor:
    """An idx file (big-endian header: magic with the number of dimensions, then each size) as a uint8 tensor."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise FulmenError(f"{path} is not an idx file of unsigned bytes (its header is not 0x0000 08 NN).")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = raw[4 + 4 * ndim:]
    expected = math.prod(dims)
    if len(body) != expected:
        raise FulmenError(f"{path} is truncated: its header announces {dims} ({expected} bytes), it holds {len(body)}.")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).view(*dims)


def _check_present(root: str, names: tuple[str, ...]) -> None:
    missing = [n for n in names if _find(root, n) is None]
    if missing:
        raise MNISTFilesNotFoundError(
            f"MNIST files not found: {', '.join(missing)} (or .gz) in {os.path.abspath(root)}, "
            f"{os.path.join(root, 'MNIST', 'raw')} or {os.path.join(root, 'MNIST')}. fulmen does not download data: "
            "copy the four MNIST idx files there (for example with `torchvision.datasets.MNIST(root, download=True)`, "
            "which writes them to root/MNIST/raw)."
        )


class MNIST(Dataset):
    """MNIST digits: each item is a ``(1, 28, 28)`` float image and its label (an int).

    Without ``transform`` the image is scaled to [0, 1] and, when ``normalize=(mean, std)`` is given,
    standardised with it. With ``transform`` (e.g. torchvision's ``ToTensor()``) the transform gets the
    image as a PIL image, as torchvision's MNIST gives it, and ``normalize`` is not applied.

    ``download`` is accepted for Lightning's signature; fulmen never downloads. Missing files raise
    :class:`MNISTFilesNotFoundError` naming them.

    Example::

        train = MNIST("data", train=True)
        image, label = train[0]
    """

    def __init__(self, root: str | os.PathLike, train: bool = True, normalize: tuple | None = (0.1307, 0.3081),
                 download: bool = False, transform: Callable | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.root = os.fspath(root)
        self.train = train
        self.normalize = normalize
        self.transform = transform
        _check_present(self.root, _FILES[bool(train)])
        images, labels = (_find(self.root, n) for n in _FILES[bool(train)])
        self.data = _read_idx(images)
        self.targets = _read_idx(labels).long()
        if len(self.data) != len(self.targets):
            raise FulmenError(f"MNIST files disagree: {len(self.data)} images but {len(self.targets)} labels.")

    def __getitem__(self, idx: int) -> tuple[Any, int]:
        target = int(self.targets[idx])
        if self.transform is not None:
            try:
                from PIL import Image
            except ImportError:
                return self.transform(self.data[idx]), target
            return self.transform(Image.fromarray(self.data[idx].numpy(), mode="L")), target
        img = self.data[idx].float().div(255).unsqueeze(0)
        if self.normalize is not None and len(self.normalize) == 2:
            img = img.sub(self.normalize[0]).div(self.normalize[1])
        return img, target

    def __len__(self) -> int:
        return len(self.data)


class MNISTDataModule(LightningDataModule):
    """MNIST with ``val_split`` training images held out for validation (split with ``seed``).

    Args:
        data_dir: Folder with the idx files (see the module's docstring for where they may be); ``./data`` by
            default, as in Lightning's demo.
        val_split: How many training images go to the validation set.
        num_workers: DataLoader workers (fulmen's default is 0 where Lightning's demo uses 16).
        normalize: Standardise images with MNIST's mean and std.
        seed: Seed of the train/validation split.
        batch_size: Batch size of every loader.

    Example::

        dm = MNISTDataModule("data", batch_size=128)
        trainer.fit(model, datamodule=dm)
        trainer.test(model, datamodule=dm)
    """

    name = "mnist"

    def __init__(self, data_dir: str | os.PathLike = "./data", val_split: int = 5000, num_workers: int = 0,
                 normalize: bool = False, seed: int = 42, batch_size: int = 32) -> None:
        super().__init__()
        self.data_dir = os.fspath(data_dir)
        self.val_split = val_split
        self.num_workers = num_workers
        self.normalize = normalize
        self.seed = seed
        self.batch_size = batch_size

    @property
    def num_classes(self) -> int:
        return 10

    def _dataset(self, train: bool) -> MNIST:
        return MNIST(self.data_dir, train=train, normalize=(0.1307, 0.3081) if self.normalize else None)

    def prepare_data(self) -> None:
        """Check that the four files are there (nothing is downloaded), so a missing file fails before training."""
        _check_present(self.data_dir, _FILES[True] + _FILES[False])

    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate"):
            full = self._dataset(True)
            if not 0 <= self.val_split < len(full):
                from fulmen.errors import MisconfigurationException

                raise MisconfigurationException(
                    f"MNISTDataModule(val_split={self.val_split}) must be below the {len(full)} training images."
                )
            self.dataset_train, self.dataset_val = random_split(
                full, [len(full) - self.val_split, self.val_split], generator=torch.Generator().manual_seed(self.seed)
            )
        if stage in ("test", "predict"):
            self.dataset_test = self._dataset(False)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          drop_last=True, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.dataset_train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset_val, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset_test, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.dataset_test, shuffle=False)
