"""Lightning's ``lightning.fabric.plugins.environments`` path."""

from fulmen.strategies.environments import (ClusterEnvironment, KubeflowEnvironment, LightningEnvironment,
                                            LSFEnvironment, MPIEnvironment, SLURMEnvironment, TorchElasticEnvironment)

__all__ = ["ClusterEnvironment", "KubeflowEnvironment", "LightningEnvironment", "LSFEnvironment", "MPIEnvironment",
           "SLURMEnvironment", "TorchElasticEnvironment"]
