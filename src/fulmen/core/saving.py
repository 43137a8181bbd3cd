"""Lightning's path ``core.saving``: reading and writing the hyperparameter files loggers keep.

Example::

    from fulmen.core.saving import load_hparams_from_yaml, save_hparams_to_yaml

    save_hparams_to_yaml("hparams.yaml", {"lr": 0.1})
    load_hparams_from_yaml("hparams.yaml")  # {'lr': 0.1}
"""

from fulmen.saving import load_hparams_from_tags_csv, load_hparams_from_yaml, save_hparams_to_yaml

__all__ = ["load_hparams_from_tags_csv", "load_hparams_from_yaml", "save_hparams_to_yaml"]
