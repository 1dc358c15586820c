"""This process's rank and the world size under MindSpore's ``msrun`` launcher.

``msrun --worker_num=N --local_worker_num=M script.py ...`` starts M processes per node and
marks each with ``MS_ROLE=MS_WORKER``; ``mindspore.communication.init()`` then joins them
(HCCL on Ascend, NCCL on GPU, MindSpore's own collectives on CPU). A plain ``python script.py``
is rank 0 of 1 and never touches the communication library.
"""
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def is_writer(self) -> bool:
        """Rank 0 alone writes shared outputs (trial folder, checkpoints, images)."""
        return self.rank == 0

    def __str__(self) -> str:
        return f"rank {self.rank}/{self.world}"


def under_msrun() -> bool:
    """A process started by msrun: a worker, or its scheduler (which runs the same script)."""
    return os.environ.get("MS_ROLE") in ("MS_WORKER", "MS_SCHED")


def join_msrun() -> Ranks:
    """``Ranks(0, 1)`` in a plain process. Under ``msrun``: joins the cluster (call after
    ``setup_runtime``, which sets the device the collectives run on) and returns this
    process's rank (multi-node: known only after joining unless ``--node_rank`` is given)."""
    if not under_msrun():
        return Ranks()
    from mindspore.communication import get_group_size, get_rank, init

    scheduler = os.environ.get("MS_ROLE") == "MS_SCHED"
    try:
        init()  # msrun's scheduler process serves the cluster in here and exits when the workers are done
    except RuntimeError as err:
        if not scheduler:
            raise
        # a worker left early and its own log says why: the scheduler's part is one line, no traceback
        raise SystemExit(f"error: msrun scheduler: {str(err).strip().splitlines()[0]}") from None
    if scheduler:
        raise SystemExit(0)
    return Ranks(int(get_rank()), int(get_group_size()))


def msrun_rank_prefix() -> str:
    """``"rank 1: "`` for messages of an msrun worker (msrun names the rank it started), else ``""``."""
    rank = os.environ.get("RANK_ID")
    return f"rank {rank}: " if os.environ.get("MS_ROLE") == "MS_WORKER" and rank is not None else ""
