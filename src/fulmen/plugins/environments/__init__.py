"""Lightning's import path for the cluster environments; they live in :mod:`fulmen.strategies.environments`.

Example::

    from fulmen.plugins.environments import SLURMEnvironment

    trainer = fulmen.Trainer(devices=4, num_nodes=2, plugins=[SLURMEnvironment()])
"""

from fulmen.strategies.environments import (
    ClusterEnvironment,
    KubeflowEnvironment,
    LightningEnvironment,
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)

__all__ = [
    "ClusterEnvironment", "KubeflowEnvironment", "LSFEnvironment", "LightningEnvironment", "MPIEnvironment",
    "SLURMEnvironment", "TorchElasticEnvironment",
]
