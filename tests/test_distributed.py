"""Data-parallel training equals one process: gradient accumulation in one process, and ``mpiexec -n 2`` ranks
(MPI) against a single process, with resumes across world sizes and faults that stop every rank in bounded time.

The MPI tests launch ``mpiexec`` from the environment (``pip install 'lstmx[mpi]'`` brings mpi4py and MPICH; the
``dev`` extra installs them) and skip with the reason when it is absent.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lstmx.training import checkpoint as ckpt
from lstmx.training.distributed import shard
from lstmx.training.runlog import read_log

from .test_checkpoint import TEXT, small_trainer

HERE = Path(__file__).resolve().parent
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
try:
    import mpi4py  # noqa: F401
except ImportError:
    mpi4py = None
needs_mpi = pytest.mark.skipif(MPIEXEC is None or mpi4py is None,
                               reason="mpiexec or mpi4py missing (pip install 'lstmx[mpi]')")

# float64, so "equal" can mean to 1e-10: only the order of floating-point sums differs
RECIPE = ["--batch-size", "6", "--seq-len", "12", "--hidden-size", "12", "--embedding-size", "6", "--num-layers", "2",
          "--dropout", "0.2", "--dtype", "float64", "--log-every", "1", "--eval-every", "4", "--sample-length", "0",
          "--no-progress"]


def test_shards_cover_the_batch_in_order():
    for total in range(1, 12):
        for parts in range(1, total + 1):
            pieces = [shard(total, parts, k) for k in range(parts)]
            assert pieces[0][0] == 0 and pieces[-1][1] == total
            assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))
            assert max(b - a for a, b in pieces) - min(b - a for a, b in pieces) <= 1


@pytest.mark.parametrize("accumulate", [2, 3])
def test_accumulation_gives_the_same_steps_as_one_batch(tmp_path, accumulate):
    """K micro-batches per step (here of uneven sizes for K = 3 with B = 4) = one batch of B, dropout included."""
    runs = []
    for k in (1, accumulate):
        trainer, _ = small_trainer(tmp_path / f"k{k}", steps=6, accumulate=k)
        trainer.model.dropout = 0.3
        records = trainer.run()
        runs.append(([r["train_loss"] for r in records if "train_loss" in r], trainer.model.state_dict()))
    (losses_1, weights_1), (losses_k, weights_k) = runs
    np.testing.assert_allclose(losses_k, losses_1, rtol=2e-6)  # float32: sums in another order
    for name in weights_1:
        np.testing.assert_allclose(weights_k[name], weights_1[name], rtol=1e-4, atol=2e-6, err_msg=name)


def test_accumulation_refuses_more_parts_than_streams(tmp_path):
    with pytest.raises(ValueError, match="batch_size 4 cannot be shared by 1 rank.*5 micro-batch"):
        small_trainer(tmp_path, accumulate=5)


def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def single(tmp_path: Path, out: str, *extra: str) -> None:
    from lstmx.cli import main

    assert main(["train", str(corpus(tmp_path)), "--out", str(tmp_path / out), *RECIPE, *extra]) == 0


def ranks(tmp_path: Path, out: str, *extra: str, n: int = 2, plant: tuple[str, ...] = (),
          timeout: float = 120) -> subprocess.CompletedProcess:
    command = [MPIEXEC, "-n", str(n), sys.executable, str(HERE / "mpi_rank.py"), *plant, "--",
               str(corpus(tmp_path)), "--out", str(tmp_path / out), "--distributed", "mpi", *RECIPE, *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


def losses(tmp_path: Path, out: str) -> list[float]:
    return [r["train_loss"] for r in read_log(tmp_path / out / "log.jsonl") if "train_loss" in r]


def weights(tmp_path: Path, out: str) -> dict[str, np.ndarray]:
    return ckpt.load(tmp_path / out / "last.npz").arrays


def assert_same_run(tmp_path: Path, first: str, second: str) -> None:
    np.testing.assert_allclose(losses(tmp_path, first), losses(tmp_path, second), rtol=1e-12)
    ours, theirs = weights(tmp_path, first), weights(tmp_path, second)
    assert ours.keys() == theirs.keys()
    for name in ours:  # parameters, optimizer moments and the carried state of the whole batch
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-10, atol=1e-12, err_msg=name)


@needs_mpi
def test_two_ranks_train_what_one_process_trains(tmp_path):
    single(tmp_path, "one", "--steps", "8")
    result = ranks(tmp_path, "two", "--steps", "8")
    assert result.returncode == 0, result.stderr
    assert "2 ranks (mpi)" in result.stderr
    assert_same_run(tmp_path, "one", "two")
    assert ckpt.load(tmp_path / "two" / "last.npz").meta["world_size"] == 2


@needs_mpi
def test_a_run_resumes_under_another_number_of_ranks(tmp_path):
    single(tmp_path, "straight", "--steps", "8")
    result = ranks(tmp_path, "two_then_one", "--steps", "4")  # 2 ranks write the checkpoint at step 4 ...
    assert result.returncode == 0, result.stderr
    single(tmp_path, "two_then_one", "--resume", str(tmp_path / "two_then_one" / "last.npz"), "--steps", "8")
    assert_same_run(tmp_path, "straight", "two_then_one")  # ... one process finishes it
    single(tmp_path, "one_then_two", "--steps", "4")
    result = ranks(tmp_path, "one_then_two", "--resume", str(tmp_path / "one_then_two" / "last.npz"), "--steps", "8")
    assert result.returncode == 0, result.stderr
    assert_same_run(tmp_path, "straight", "one_then_two")


@needs_mpi
@pytest.mark.parametrize("how", ["raise", "kill"])
def test_a_failing_rank_stops_every_rank_and_keeps_the_last_checkpoint(tmp_path, how):
    # a hang would exceed the launch's timeout (subprocess.TimeoutExpired fails the test): every rank must stop
    result = ranks(tmp_path, "run", "--steps", "40", plant=("--fail", f"1:6:{how}"), timeout=90)
    assert result.returncode != 0
    if how == "raise":
        assert "[rank 1] lstmx train: error on rank 1: RuntimeError: planted failure on rank 1 at step 6" in result.stderr
    saved = ckpt.load(tmp_path / "run" / "last.npz")  # written at step 4, intact
    assert saved.meta["progress"]["step"] == 4
    assert not list((tmp_path / "run").glob(".*.tmp"))


@needs_mpi
def test_ranks_that_disagree_are_refused_naming_the_difference(tmp_path):
    result = ranks(tmp_path, "run", "--steps", "4", plant=("--rank-args", "1", "--hidden-size 16"))
    assert result.returncode != 0
    assert 'rank 1 disagrees with rank 0 on model["config"]["hidden_size"]: 16 against' in result.stderr


@needs_mpi
def test_an_mpi_launch_without_distributed_is_refused(tmp_path):
    command = [MPIEXEC, "-n", "2", sys.executable, "-m", "lstmx.cli", "train", str(corpus(tmp_path)),
               "--out", str(tmp_path / "run"), "--steps", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode != 0 and "--distributed is none" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(mpi4py is None, reason="mpi4py missing (pip install 'lstmx[mpi]')")
def test_an_mpi_library_that_sees_another_world_than_the_launcher_is_refused(tmp_path):
    """What happens when mpi4py loads another MPI than the launcher's: every process is a world of one."""
    import os

    command = [sys.executable, "-m", "lstmx.cli", "train", str(corpus(tmp_path)), "--out", str(tmp_path / "run"),
               "--steps", "2", "--distributed", "mpi"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path,
                            env={**os.environ, "PMI_SIZE": "2", "PMI_RANK": "0"})
    assert result.returncode == 2
    assert "mpiexec started 2 processes but MPI sees a world of 1" in result.stderr
    assert not (tmp_path / "run").exists()
