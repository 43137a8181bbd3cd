"""Small models, data sets and data modules to try fulmen, write bug reports and tests against.

Nothing here downloads: random data is generated, WikiText2 reads a local text file (or generates a
corpus), and MNIST reads the standard idx files from a folder you provide.

Example::

    import fulmen
    from fulmen.demos import BoringModel

    fulmen.Trainer(max_epochs=1, limit_train_batches=4).fit(BoringModel())
"""

from fulmen.demos.boring_classes import BoringDataModule, BoringModel, DemoModel
from fulmen.demos.lstm import LightningLSTM, SequenceSampler, SimpleLSTM
from fulmen.demos.transformer import LightningTransformer, Transformer, WikiText2

__all__ = [
    "BoringDataModule", "BoringModel", "DemoModel", "LightningLSTM", "LightningTransformer", "SequenceSampler",
    "SimpleLSTM", "Transformer", "WikiText2",
]
