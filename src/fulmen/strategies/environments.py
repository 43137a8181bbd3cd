"""Cluster environments: where a process learns its rank, the world size and the main node's address.

Each is a small class with Lightning's name. ``detect_environment`` picks the first that recognises
the process's environment variables, in Lightning's order: torchrun (TorchElastic), SLURM, LSF, MPI
(only when mpi4py is installed), and otherwise ``LightningEnvironment``, under which fulmen starts
the other processes itself. Kubeflow is never guessed: pass ``KubeflowEnvironment()`` as a plugin.
"""

from __future__ import annotations

import os
import re
import socket
from typing import Any

from fulmen.errors import MisconfigurationException


def find_free_network_port() -> int:
    """A TCP port free on this machine right now (the OS picks it), for the main process to listen on.

    Example::

        os.environ.setdefault("MASTER_PORT", str(find_free_network_port()))
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _int_env(*names: str, default: int | None = None) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    if default is None:
        raise MisconfigurationException(f"The environment variable {names[0]} is not set; the cluster environment needs it.")
    return default


class ClusterEnvironment:
    """What every environment answers. Ranks set by ``set_*`` win over the environment's variables.

    Example::

        class MyCluster(ClusterEnvironment):
            creates_processes_externally = True
            def world_size(self): return int(os.environ["MY_WORLD"])
            ...
    """

    # where each count is read: the value when none of its variables is set (None: one must be), then the
    # variables, the first one set winning
    _env_vars: dict[str, tuple[int | None, str, ...]] = {
        "world_size": (1, "WORLD_SIZE"), "global_rank": (0, "RANK"), "local_rank": (0, "LOCAL_RANK"),
        "node_rank": (0, "NODE_RANK", "GROUP_RANK")}

    def __init__(self) -> None:
        self._global_rank: int | None = None
        self._world_size: int | None = None

    def _from_env(self, count: str) -> int:
        default, *names = self._env_vars[count]
        return _int_env(*names, default=default)

    @property
    def creates_processes_externally(self) -> bool:
        """True when something else (torchrun, srun, mpirun) started every process."""
        return True

    @property
    def main_address(self) -> str:
        return os.environ.get("MASTER_ADDR", "127.0.0.1")

    @property
    def main_port(self) -> int:
        return _int_env("MASTER_PORT")

    @staticmethod
    def detect() -> bool:
        return False

    def world_size(self) -> int:
        return self._world_size if self._world_size is not None else self._from_env("world_size")

    def set_world_size(self, size: int) -> None:
        self._world_size = size

    def global_rank(self) -> int:
        return self._global_rank if self._global_rank is not None else self._from_env("global_rank")

    def set_global_rank(self, rank: int) -> None:
        self._global_rank = rank

    def local_rank(self) -> int:
        return self._from_env("local_rank")

    def node_rank(self) -> int:
        return self._from_env("node_rank")

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        """Raise when the Trainer's devices/num_nodes contradict what the cluster says."""

    def teardown(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LightningEnvironment(ClusterEnvironment):
    """One machine (or a cluster without a scheduler): fulmen starts the processes itself, unless
    ``LOCAL_RANK`` is set, which means someone else did. A free ``MASTER_PORT`` is chosen when none is given.

    Example::

        Trainer(devices=2, strategy="ddp", plugins=[LightningEnvironment()])
    """

    def __init__(self) -> None:
        super().__init__()
        self._main_port: int | None = None

    @property
    def creates_processes_externally(self) -> bool:
        return "LOCAL_RANK" in os.environ

    @property
    def main_port(self) -> int:
        if self._main_port is None:
            port = os.environ.get("MASTER_PORT")
            self._main_port = int(port) if port else find_free_network_port()
        return self._main_port

    @staticmethod
    def detect() -> bool:
        return True


class TorchElasticEnvironment(ClusterEnvironment):
    """Processes started by ``torchrun`` (TorchElastic): it sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT.

    Example::

        # torchrun --nproc_per_node=2 train.py   (detected on its own)
    """

    _env_vars = {**ClusterEnvironment._env_vars, "node_rank": (0, "GROUP_RANK", "NODE_RANK")}

    @property
    def main_port(self) -> int:
        return _int_env("MASTER_PORT", default=12910)

    @staticmethod
    def detect() -> bool:
        return "TORCHELASTIC_RUN_ID" in os.environ and all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        expected = num_devices * num_nodes
        if expected != self.world_size():
            raise MisconfigurationException(
                f"torchrun started {self.world_size()} processes (WORLD_SIZE), but the Trainer asks for "
                f"devices={num_devices} x num_nodes={num_nodes} = {expected}. Make them match: "
                f"Trainer(devices=<--nproc_per_node>, num_nodes=<--nnodes>)."
            )


def expand_slurm_nodelist(nodelist: str) -> list[str]:
    """SLURM's compact host list, expanded: ``"node[01-03,07],gpu5"`` -> node01, node02, node03, node07, gpu5.

    Example::

        expand_slurm_nodelist("node[01-02]")  # ['node01', 'node02']
    """
    hosts: list[str] = []
    for part in re.findall(r"[^,\[\s]+(?:\[[^\]]*\])?[^,\s]*", nodelist):
        match = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if match is None:
            hosts.append(part)
            continue
        prefix, ranges, suffix = match.groups()
        for item in ranges.split(","):
            lo, _, hi = item.partition("-")
            if not hi:
                hosts.append(f"{prefix}{lo}{suffix}")
                continue
            width = len(lo)
            hosts.extend(f"{prefix}{n:0{width}d}{suffix}" for n in range(int(lo), int(hi) + 1))
    return hosts


class SLURMEnvironment(ClusterEnvironment):
    """Processes started by ``srun``: ranks from SLURM_PROCID/SLURM_LOCALID/SLURM_NODEID, the main address is
    the first host of SLURM_JOB_NODELIST, the port derived from the job id unless MASTER_PORT is set.

    Args:
        auto_requeue: Requeue the job when SLURM signals that its time is up, so it resumes from its last
            checkpoint.
        requeue_signal: The signal SLURM sends before the end of the job. None: SIGUSR1.

    Example::

        # sbatch: #SBATCH --nodes=2 --ntasks-per-node=4, then: srun python train.py
        Trainer(accelerator="gpu", devices=4, num_nodes=2)
    """

    _env_vars = {"world_size": (None, "SLURM_NTASKS"), "global_rank": (None, "SLURM_PROCID"),
                 "local_rank": (None, "SLURM_LOCALID"), "node_rank": (None, "SLURM_NODEID")}

    def __init__(self, auto_requeue: bool = True, requeue_signal: Any = None) -> None:
        super().__init__()
        self.auto_requeue = auto_requeue
        self.requeue_signal = requeue_signal

    @property
    def main_address(self) -> str:
        if "MASTER_ADDR" not in os.environ:
            nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST") or "127.0.0.1"
            hosts = expand_slurm_nodelist(nodelist)
            os.environ["MASTER_ADDR"] = hosts[0] if hosts else "127.0.0.1"
        return os.environ["MASTER_ADDR"]

    @property
    def main_port(self) -> int:
        if "MASTER_PORT" not in os.environ:
            job_id = os.environ.get("SLURM_JOB_ID", "")
            os.environ["MASTER_PORT"] = str(15000 + int(job_id[-4:]) if job_id.isdigit() else 12910)
        return int(os.environ["MASTER_PORT"])

    @staticmethod
    def detect() -> bool:
        # an interactive allocation (`srun --pty bash`) is not a training job: processes are not srun's
        return "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive")

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        per_node = os.environ.get("SLURM_NTASKS_PER_NODE")
        if per_node is not None and per_node.isdigit() and int(per_node) != num_devices:
            raise MisconfigurationException(
                f"SLURM runs {per_node} tasks per node (--ntasks-per-node), but the Trainer has devices={num_devices}. "
                f"Set Trainer(devices={per_node}) or change --ntasks-per-node."
            )
        nnodes = os.environ.get("SLURM_NNODES")
        if nnodes is not None and nnodes.isdigit() and int(nnodes) != num_nodes:
            raise MisconfigurationException(
                f"SLURM allocated {nnodes} nodes (--nodes), but the Trainer has num_nodes={num_nodes}. "
                f"Set Trainer(num_nodes={nnodes})."
            )


class KubeflowEnvironment(ClusterEnvironment):
    """Kubeflow's PyTorchJob: one process per pod, ranks from RANK/WORLD_SIZE. Never detected on its own.

    Example::

        Trainer(devices=1, num_nodes=4, plugins=[KubeflowEnvironment()])
    """

    @staticmethod
    def detect() -> bool:
        return False  # its variables look like torchrun's; the user says so explicitly

    def local_rank(self) -> int:
        return 0

    def node_rank(self) -> int:
        return self.global_rank()


class LSFEnvironment(ClusterEnvironment):
    """IBM LSF with ``jsrun``: ranks from the JSM_NAMESPACE_* variables, hosts from LSB_DJOB_RANKFILE.

    Example::

        # jsrun -n 8 python train.py   (detected on its own)
    """

    _env_vars = {"world_size": (None, "JSM_NAMESPACE_SIZE"), "global_rank": (None, "JSM_NAMESPACE_RANK"),
                 "local_rank": (None, "JSM_NAMESPACE_LOCAL_RANK")}

    @staticmethod
    def detect() -> bool:
        return all(k in os.environ for k in ("LSB_JOBID", "LSB_DJOB_RANKFILE", "JSM_NAMESPACE_LOCAL_RANK",
                                             "JSM_NAMESPACE_SIZE"))

    def _hosts(self) -> list[str]:
        with open(os.environ["LSB_DJOB_RANKFILE"]) as f:
            hosts = [line.strip() for line in f if line.strip()]
        return hosts[1:]  # the first line is the launch node, which runs no rank

    @property
    def main_address(self) -> str:
        return os.environ.get("MASTER_ADDR") or self._hosts()[0]

    @property
    def main_port(self) -> int:
        if "MASTER_PORT" in os.environ:
            return int(os.environ["MASTER_PORT"])
        return 10000 + int(os.environ["LSB_JOBID"]) % 1000

    def node_rank(self) -> int:
        unique = list(dict.fromkeys(self._hosts()))
        return unique.index(socket.gethostname()) if socket.gethostname() in unique else 0


class MPIEnvironment(ClusterEnvironment):
    """Processes started by ``mpirun``; needs mpi4py (only then is it detected).

    Example::

        # mpirun -n 4 python train.py
    """

    def __init__(self) -> None:
        super().__init__()
        from mpi4py import MPI

        self._comm = MPI.COMM_WORLD
        self._node_rank: int | None = None
        self._local_rank: int | None = None

    @staticmethod
    def detect() -> bool:
        try:
            from mpi4py import MPI
        except Exception:  # not installed, or installed without an MPI library
            return False
        return MPI.COMM_WORLD.Get_size() > 1

    @property
    def main_address(self) -> str:
        if "MASTER_ADDR" not in os.environ:
            os.environ["MASTER_ADDR"] = self._comm.bcast(socket.gethostname(), root=0)
        return os.environ["MASTER_ADDR"]

    @property
    def main_port(self) -> int:
        if "MASTER_PORT" not in os.environ:
            os.environ["MASTER_PORT"] = str(self._comm.bcast(find_free_network_port(), root=0))
        return int(os.environ["MASTER_PORT"])

    def world_size(self) -> int:
        return self._world_size if self._world_size is not None else self._comm.Get_size()

    def global_rank(self) -> int:
        return self._global_rank if self._global_rank is not None else self._comm.Get_rank()

    def _ranks_on_nodes(self) -> None:
        hosts = self._comm.allgather(socket.gethostname())
        unique = list(dict.fromkeys(hosts))
        me = hosts[self.global_rank()]
        self._node_rank = unique.index(me)
        self._local_rank = hosts[: self.global_rank()].count(me)

    def local_rank(self) -> int:
        if self._local_rank is None:
            self._ranks_on_nodes()
        return self._local_rank  # type: ignore[return-value]

    def node_rank(self) -> int:
        if self._node_rank is None:
            self._ranks_on_nodes()
        return self._node_rank  # type: ignore[return-value]


def detect_environment() -> ClusterEnvironment:
    """The environment this process runs in, checked in Lightning's order.

    Example::

        env = detect_environment()  # LightningEnvironment() on a laptop
    """
    for cls in (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment):
        if cls.detect():
            return cls()
    return LightningEnvironment()
