"""Which share of a sweep's evaluations this process runs, under ``accelerate launch``.

A sweep's cost is its evaluations, and candidates are independent: with N processes (GPUs) each
loads the model once and takes every N-th unit of work (a candidate, or a candidate's block in a
halving round), writing into the same resumable result store (one atomic file per unit, so
processes never write the same file). At the end of a round every process waits for the others
(:meth:`Shard.wait`), then reads the whole store, so all of them take the same decisions; only the
main process writes the tables, figures and report.

The process group is accelerate's (``PartialState``; gloo on CPU, NCCL on GPUs), started only when
``WORLD_SIZE`` > 1, so a plain single-process sweep never initialises torch.distributed. Launch with
``accelerate launch --config_file examples/accelerate/ddp-2.yaml -m layerswap sweep ...`` (or
``--multi_gpu --num_processes N``): ``--cpu --num_processes 2`` starts a single process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

T = TypeVar("T")

#: How long a process waits for the others at the end of a round. A share of a 7-8B sweep can take
#: hours when the candidates' costs differ (torch's default of 30 minutes would end such a sweep).
BARRIER_TIMEOUT = timedelta(hours=12)


@dataclass(frozen=True)
class Shard:
    """This process's place among ``world`` processes (``rank`` 0 is the main one)."""

    rank: int = 0
    world: int = 1
    state: Any = None

    @classmethod
    def from_environment(cls) -> Shard:
        """One process, or this process of an ``accelerate launch`` (``torchrun``) group."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch
        from accelerate import PartialState

        # Without ``cpu=True`` accelerate sees no process group on a machine without GPUs (each
        # process would think it is alone and run every candidate); on CPUs the group is gloo.
        state = PartialState(cpu=not torch.cuda.is_available(), timeout=BARRIER_TIMEOUT)
        return cls(int(state.process_index), int(state.num_processes), state)

    @staticmethod
    def launched_alone() -> bool:
        """Whether ``accelerate launch --cpu --num_processes N`` started this one process on its own
        (``MASTER_ADDR`` set, no group size): the sweep is then right but not shared out."""
        env = os.environ
        group = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
        cpu = env.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        return cpu and "MASTER_ADDR" in env and not any(k in env for k in group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mine(self, units: Sequence[T]) -> list[T]:
        """This process's units: every ``world``-th, starting at ``rank`` (the order is kept)."""
        return list(units[self.rank :: self.world])

    def wait(self) -> None:
        """Block until every process has reached this point (no-op with one process)."""
        if self.state is not None:
            self.state.wait_for_everyone()

    def describe(self) -> str:
        return f"process {self.rank + 1} of {self.world}"
