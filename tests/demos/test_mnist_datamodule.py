"""fulmen.demos.mnist_datamodule: MNIST from local idx files, never downloaded, with a clear error when missing."""

import gzip

import pytest
import torch

import fulmen as pl
from fulmen.demos.mnist_datamodule import MNIST, MNISTDataModule, MNISTFilesNotFoundError
from fulmen.errors import FulmenError


def _write_idx(path, tensor, gz=False):
    header = bytes([0, 0, 0x08, tensor.dim()]) + b"".join(d.to_bytes(4, "big") for d in tensor.shape)
    data = header + bytes(tensor.flatten().tolist())
    (gzip.open if gz else open)(path, "wb").write(data)


def _mnist_files(folder, n_train=40, n_test=12, gz=False):
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = torch.arange(n) % 10
        images = torch.randint(0, 50, (n, 28, 28), generator=g, dtype=torch.uint8)
        images[:, :, :3] = (labels * 25).view(-1, 1, 1).to(torch.uint8)  # the label is readable from the pixels
        suffix = ".gz" if gz else ""
        _write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels.to(torch.uint8), gz)


def test_missing_files_raise_a_fulmen_error_naming_them(tmp_path):
    with pytest.raises(MNISTFilesNotFoundError, match="train-images-idx3-ubyte, train-labels-idx1-ubyte") as err:
        MNIST(tmp_path, train=True, download=True)
    assert isinstance(err.value, FulmenError) and isinstance(err.value, FileNotFoundError)
    assert "does not download" in str(err.value)
    with pytest.raises(MNISTFilesNotFoundError, match="train-images-idx3-ubyte, .*t10k-labels-idx1-ubyte"):
        MNISTDataModule(tmp_path).prepare_data()


@pytest.mark.parametrize("where, gz", [("", False), ("MNIST/raw", True)])
def test_reads_idx_files_from_the_folder_or_torchvisions_layout(tmp_path, where, gz):
    _mnist_files(tmp_path / where if where else tmp_path, gz=gz)
    train = MNIST(tmp_path, train=True, normalize=None)
    test = MNIST(tmp_path, train=False)
    assert len(train) == 40 and len(test) == 12
    img, label = train[13]
    assert img.shape == (1, 28, 28) and img.dtype == torch.float32 and label == 3
    assert img[0, 0, 0].item() == pytest.approx(75 / 255)
    normed, _ = MNIST(tmp_path, normalize=(0.5, 0.25))[13]
    assert normed[0, 0, 0].item() == pytest.approx((75 / 255 - 0.5) / 0.25)


def test_truncated_file_is_reported(tmp_path):
    _mnist_files(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(FulmenError, match="truncated"):
        MNIST(tmp_path)


def test_datamodule_splits_and_trains(tmp_path):
    _mnist_files(tmp_path)

    class Classifier(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(28 * 28, 10)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x.flatten(1)), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_acc", (self.net(x.flatten(1)).argmax(1) == y).float().mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.5)

    dm = MNISTDataModule(tmp_path, val_split=8, batch_size=4, seed=1)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(Classifier(), datamodule=dm)
    assert len(dm.dataset_train) == 32 and len(dm.dataset_val) == 8 and dm.num_classes == 10
    assert trainer.global_step == 8 and trainer.num_val_batches == [2]
    with pytest.raises(pl.errors.MisconfigurationException, match="val_split=40"):
        MNISTDataModule(tmp_path, val_split=40).setup("fit")


def test_default_folder_is_data_as_in_lightning(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _mnist_files(tmp_path / "data" / "MNIST" / "raw", gz=True)  # where torchvision's download puts them
    dm = MNISTDataModule(batch_size=4, val_split=8)
    assert dm.data_dir == "./data"
    dm.prepare_data()
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 1, 28, 28) and len(dm.val_dataloader().dataset) == 8
