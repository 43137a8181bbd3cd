"""fulmen.plugins: Lightning's plugin names construct working precision and checkpoint-IO plugins."""

import pytest
import torch
from torch.utils.data import DataLoader

import fulmen as pl
from fulmen.demos.boring_classes import BoringModel, RandomDataset
from fulmen.errors import MisconfigurationException


class Recorder(BoringModel):
    def training_step(self, batch, batch_idx):
        self.seen_dtype = (batch.dtype, self.layer.weight.dtype)
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("make, dtype", [
    (lambda p: p.DoublePrecision(), torch.float64),
    (lambda p: p.HalfPrecision("bf16-true"), torch.bfloat16),
])
def test_true_precision_plugins_convert_module_and_batches(make, dtype):
    import fulmen.plugins as plugins
    from fulmen.plugins.precision import DoublePrecision, HalfPrecision

    plugin = make(plugins)
    assert isinstance(plugin, (DoublePrecision, HalfPrecision))
    model = Recorder()
    pl.Trainer(max_steps=1, plugins=[plugin], logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False).fit(model, DataLoader(RandomDataset(32, 4)))
    assert model.seen_dtype == (dtype, dtype)


def test_half_precision_rejects_a_mixed_setting():
    from fulmen.plugins.precision.half import HalfPrecision

    with pytest.raises(MisconfigurationException, match="'16-true' or 'bf16-true'"):
        HalfPrecision("16-mixed")


def test_checkpoint_io_plugin_from_lightnings_path_writes_the_checkpoints(tmp_path):
    from fulmen.plugins.io import TorchCheckpointIO

    class Counting(TorchCheckpointIO):
        saved = []

        def save_checkpoint(self, checkpoint, path, storage_options=None):
            Counting.saved.append(str(path))
            super().save_checkpoint(checkpoint, path, storage_options)

    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, plugins=[Counting()],
                         default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(BoringModel())
    assert len(Counting.saved) == 1 and Counting.saved[0].endswith(".ckpt")
    assert torch.load(Counting.saved[0], weights_only=False)["global_step"] == 2


def test_mixed_precision_survives_pickling_for_spawned_processes():
    """strategy="ddp_spawn" pickles the trainer, precision plugin included; the copy still autocasts."""
    import pickle

    from fulmen.plugins.precision import MixedPrecision

    copy = pickle.loads(pickle.dumps(MixedPrecision("bf16-mixed", "cpu")))
    with copy.forward_context():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
