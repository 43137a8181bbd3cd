"""``LightningDataModule``: the data of a run — download, split, and the four loaders — in one class."""

from __future__ import annotations

from typing import Any

from fulmen.module import DataHooks, HyperparametersMixin


class LightningDataModule(HyperparametersMixin, DataHooks):
    """Everything about the data, so one model can be trained on several datasets and back.

    Example::

        class DigitsData(fulmen.LightningDataModule):
            def __init__(self, batch_size=64):
                super().__init__()
                self.save_hyperparameters()

            def setup(self, stage):
                x, y = load_digits(return_X_y=True)
                ds = TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y))
                self.train_set, self.val_set = random_split(ds, [1500, 297])

            def train_dataloader(self):
                return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

            def val_dataloader(self):
                return DataLoader(self.val_set, batch_size=256)

        trainer.fit(model, datamodule=DigitsData())
    """

    #: the checkpoint keys of the data module's hyperparameters (Lightning's names and values)
    CHECKPOINT_HYPER_PARAMS_KEY = "datamodule_hyper_parameters"
    CHECKPOINT_HYPER_PARAMS_NAME = "datamodule_hparams_name"
    CHECKPOINT_HYPER_PARAMS_TYPE = "datamodule_hparams_type"
    name: str | None = None  # a label for the data module; fulmen does not read it

    def __init__(self) -> None:
        super().__init__()
        self.trainer: Any = None

    def on_exception(self, exception: BaseException) -> None:
        """Called when a run fails, after the callbacks' ``on_exception``; override it to clean up (close files,
        stop a data server).

        Example::

            def on_exception(self, exception):
                self.reader.close()
        """

    def state_dict(self) -> dict[str, Any]:
        """What this datamodule needs to resume; saved in checkpoints."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, hparams_file: Any = None,
                             weights_only: bool | None = None, **kwargs: Any) -> Any:
        """Rebuild the datamodule from the hyperparameters saved in a checkpoint (updated by ``kwargs``).

        Example::

            dm = DigitsData.load_from_checkpoint("last.ckpt")
        """
        from fulmen.saving import load_from_checkpoint

        return load_from_checkpoint(cls, "datamodule", checkpoint_path, map_location=map_location,
                                    hparams_file=hparams_file, weights_only=weights_only, **kwargs)

    @classmethod
    def from_datasets(cls, train_dataset: Any = None, val_dataset: Any = None, test_dataset: Any = None,
                      predict_dataset: Any = None, batch_size: int = 1, num_workers: int = 0,
                      **dataloader_kwargs: Any) -> "LightningDataModule":
        """A datamodule wrapping ready datasets in DataLoaders (training shuffled).

        Example::

            dm = fulmen.LightningDataModule.from_datasets(train_ds, val_ds, batch_size=32)
        """
        from torch.utils.data import DataLoader

        def loader(ds: Any, shuffle: bool) -> Any:
            if isinstance(ds, (list, tuple)):
                return [loader(d, shuffle) for d in ds]
            if isinstance(ds, dict):
                return {k: loader(d, shuffle) for k, d in ds.items()}
            return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                              **dataloader_kwargs)

        dm = cls()
        for name, ds, shuffle in (("train", train_dataset, True), ("val", val_dataset, False),
                                  ("test", test_dataset, False), ("predict", predict_dataset, False)):
            if ds is not None:
                setattr(dm, f"{name}_dataloader", lambda ds=ds, shuffle=shuffle: loader(ds, shuffle))
        return dm
