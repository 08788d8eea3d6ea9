"""Run ``lstmx train`` as one rank of an ``mpiexec`` launch, with faults planted for the tests.

    mpiexec -n 2 python tests/mpi_rank.py [--fail RANK:STEP:raise|kill] [--rank-args RANK "ARGS"] -- <lstmx train args>

``--fail`` makes rank RANK raise an exception (or SIGKILL itself) after finishing step STEP; ``--rank-args`` appends
extra arguments on one rank only (to plant a configuration that differs between ranks).
"""

from __future__ import annotations

import os
import shlex
import signal
import sys

from mpi4py import MPI

from lstmx.cli import main
from lstmx.training.loop import Trainer


def plant_failure(rank: int, step: int, how: str) -> None:
    real = Trainer.train_step

    def failing(self):
        real(self)
        if self.comm.rank == rank and self.step == step:
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"planted failure on rank {rank} at step {step}")

    Trainer.train_step = failing


if __name__ == "__main__":
    argv = sys.argv[1:]
    split = argv.index("--")
    options, train_args = argv[:split], argv[split + 1 :]
    rank = MPI.COMM_WORLD.Get_rank()
    while options:
        name, value = options.pop(0), options.pop(0)
        if name == "--fail":
            failing_rank, step, how = value.split(":")
            plant_failure(int(failing_rank), int(step), how)
        elif name == "--rank-args":
            extra = options.pop(0)
            if int(value) == rank:
                train_args += shlex.split(extra)
    sys.exit(main(["train", *train_args]))
