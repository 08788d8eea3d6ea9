"""Data-parallel training across processes: MPI (mpi4py) for CPUs and control, NCCL for GPU gradients.

Each process (rank) holds the whole model and takes a contiguous share of the B streams of every step, so
N ranks with global batch B train the same model as one process with batch B:

- the loss is a mean per real token, so each rank scales its loss and gradients by its share of the step's
  tokens (a training window has no ignored targets, so the share is its share of the streams) and one
  all-reduce sums them all in one flat buffer (few large messages): exactly the single-process gradient, up to
  the order of floating-point sums;
- clipping and the optimizer act on that reduced gradient, identically on every rank, so parameters broadcast
  from rank 0 at the start stay identical (a checksum compares them at every evaluation);
- dropout masks are drawn for the global batch from the same seeded generator on every rank, and each rank
  uses its slice;
- validation is split the same way and reduced; rank 0 alone writes logs, plots, checkpoints and samples.
  The carried hidden state is gathered into checkpoints for the global batch, so a run written by N ranks
  resumes under M ranks, or in one process.

The engines are existing ones: ``mpi4py`` (``pip install 'lstmx[mpi]'`` brings mpi4py and the MPICH wheel, whose
``mpiexec -n 2`` runs on one machine) and, for CuPy arrays, NCCL through ``cupy.cuda.nccl`` with its unique id
sent over MPI. A rank that raises aborts the whole job (``MPI_Abort``), so the others never hang waiting.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Sequence

import numpy as np

from ..backend import Backend, is_cupy, to_numpy

ENGINES = ("none", "mpi", "nccl")


class DistributedError(RuntimeError):
    """Ranks that cannot train together (another configuration, vocabulary or data), or an engine that is missing."""


def launcher_world_size() -> int:
    """How many processes an MPI launcher started (from the variables mpiexec sets; 1 without a launcher)."""
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def launched_by_mpi() -> bool:
    """Whether an MPI launcher started this process as one of several ranks."""
    return launcher_world_size() > 1


def shard(total: int, parts: int, index: int) -> tuple[int, int]:
    """``[start, stop)`` of part ``index`` when ``total`` items are cut into ``parts`` contiguous parts whose sizes
    differ by at most one (the first ``total % parts`` parts get one more)."""
    base, extra = divmod(total, parts)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


class SingleProcess:
    """The communicator of a run in one process: every collective is the identity."""

    rank, size = 0, 1
    engine = "none"

    def allreduce(self, backend: Backend, buffer: Any) -> Any:
        return buffer

    def broadcast_object(self, value: Any) -> Any:
        return value

    def gather_object(self, value: Any) -> list[Any] | None:
        return [value]

    def allgather_object(self, value: Any) -> list[Any]:
        return [value]

    def abort(self, code: int = 1) -> None:
        raise SystemExit(code)


class MPICommunicator:
    """Collectives over ``mpi4py``'s COMM_WORLD. Device (CuPy) buffers are staged through host memory unless
    ``cuda_aware`` is set, in which case MPI reads device memory directly."""

    engine = "mpi"

    def __init__(self, cuda_aware: bool = False) -> None:
        try:
            from mpi4py import MPI
        except ImportError as error:
            raise DistributedError("--distributed mpi needs mpi4py: pip install 'lstmx[mpi]' (mpi4py and mpich)") from error
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.cuda_aware = cuda_aware
        launched = launcher_world_size()
        if launched > 1 and self.size != launched:  # each process would train alone, all into one folder
            raise DistributedError(
                f"mpiexec started {launched} processes but MPI sees a world of {self.size}: mpi4py is using another "
                f"MPI library ({MPI.Get_library_version().splitlines()[0].strip()}) than the launcher's; run the "
                "mpiexec that comes with it (pip install 'lstmx[mpi]' puts both in one environment)")

    def allreduce(self, backend: Backend, buffer: Any) -> Any:
        """Sum ``buffer`` (a 1-d array of ``backend``) over every rank; returns the sum (same backend)."""
        if is_cupy(backend) and self.cuda_aware:
            import cupy  # the namespace in backend.xp is array_api_compat's, without cupy.cuda

            cupy.cuda.get_current_stream().synchronize()
            self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM)
            return buffer
        host = np.ascontiguousarray(to_numpy(buffer))
        self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
        return host if isinstance(buffer, np.ndarray) else backend.asarray(host, dtype=buffer.dtype)

    def broadcast_object(self, value: Any) -> Any:
        return self.comm.bcast(value, root=0)

    def gather_object(self, value: Any) -> list[Any] | None:
        return self.comm.gather(value, root=0)

    def allgather_object(self, value: Any) -> list[Any]:
        return self.comm.allgather(value)

    def abort(self, code: int = 1) -> None:
        self.comm.Abort(code)


class NCCLCommunicator(MPICommunicator):
    """Gradients all-reduced by NCCL on the GPUs (one GPU per rank: the local rank's device); everything else
    (checks, objects, checkpoints) over MPI, which also carries NCCL's unique id to every rank."""

    engine = "nccl"

    def __init__(self) -> None:
        super().__init__()
        try:
            import cupy
            from cupy.cuda import nccl
        except ImportError as error:
            raise DistributedError("--distributed nccl needs CuPy with NCCL (pip install 'lstmx[cuda12]')") from error
        devices = cupy.cuda.runtime.getDeviceCount()
        local = int(os.environ.get("MPI_LOCALRANKID", os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", self.rank)))
        ranks_here = len([r for r in self.allgather_object(os.uname().nodename) if r == os.uname().nodename])
        if devices < ranks_here:
            raise DistributedError(f"--distributed nccl needs one GPU per rank: {ranks_here} ranks on this machine, "
                                   f"{devices} GPU(s); NCCL refuses two ranks on one GPU (use --distributed mpi)")
        cupy.cuda.Device(local).use()
        self.nccl, self.cupy = nccl, cupy
        unique_id = self.broadcast_object(nccl.get_unique_id() if self.rank == 0 else None)
        self.nccl_comm = nccl.NcclCommunicator(self.size, unique_id, self.rank)

    def allreduce(self, backend: Backend, buffer: Any) -> Any:
        if not is_cupy(backend):
            return super().allreduce(backend, buffer)
        kinds = {np.dtype(np.float32): self.nccl.NCCL_FLOAT32, np.dtype(np.float64): self.nccl.NCCL_FLOAT64}
        stream = self.cupy.cuda.get_current_stream()
        self.nccl_comm.allReduce(buffer.data.ptr, buffer.data.ptr, buffer.size, kinds[np.dtype(buffer.dtype)],
                                 self.nccl.NCCL_SUM, stream.ptr)
        return buffer


def communicator(engine: str) -> Any:
    """The communicator for ``engine`` ("none", "mpi" or "nccl")."""
    if engine == "none":
        if launched_by_mpi():
            raise DistributedError("this process was started by an MPI launcher with more than one rank, but "
                                   "--distributed is none: every rank would train alone into the same folder; "
                                   "pass --distributed mpi (or nccl)")
        return SingleProcess()
    if engine == "mpi":
        return MPICommunicator(cuda_aware=os.environ.get("LSTMX_CUDA_AWARE_MPI", "0") == "1")
    if engine == "nccl":
        return NCCLCommunicator()
    raise DistributedError(f"--distributed must be one of {', '.join(ENGINES)}, got {engine!r}")


def agree(comm: Any, facts: dict[str, Any]) -> None:
    """Refuse ranks that disagree on ``facts`` (configuration, vocabulary, data size), naming the first
    difference, on every rank."""
    everyone = comm.allgather_object(facts)
    for rank, theirs in enumerate(everyone):
        for key in facts:
            if theirs.get(key) != everyone[0].get(key):
                path, mine, first = _first_difference(theirs.get(key), everyone[0].get(key))
                raise DistributedError(f"rank {rank} disagrees with rank 0 on {key}{path}: {_short(mine)} "
                                       f"against {_short(first)}")


def _first_difference(a: Any, b: Any, path: str = "") -> tuple[str, Any, Any]:
    """Where two JSON-able values first differ (a path like ``["config"]["hidden_size"]``), and the two values
    there: the message names the setting, not a long record cut short."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{path}[{json.dumps(key)}]")
    return path, a, b


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def fingerprint(value: Any) -> str:
    """A short digest of a JSON-able value or an array (what ranks compare instead of the value itself)."""
    digest = hashlib.sha256()
    if isinstance(value, np.ndarray):
        digest.update(str(value.dtype).encode() + str(value.shape).encode() + np.ascontiguousarray(value).tobytes())
    else:
        digest.update(json.dumps(value, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def flatten(backend: Backend, arrays: Sequence[Any]) -> Any:
    """One 1-d buffer holding every array (for one all-reduce)."""
    xp = backend.xp
    return xp.concat([xp.reshape(a, (-1,)) for a in arrays])


def unflatten(backend: Backend, buffer: Any, like: Sequence[Any]) -> list[Any]:
    """The arrays of :func:`flatten`, with the shapes of ``like``."""
    xp = backend.xp
    out, offset = [], 0
    for array in like:
        size = int(np.prod(array.shape))
        out.append(xp.reshape(buffer[offset : offset + size], array.shape))
        offset += size
    return out
