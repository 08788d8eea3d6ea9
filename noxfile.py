"""Test sessions: ``nox -s tests-cpu`` (NumPy + array-api-strict), ``nox -s tests-gpu`` (CuPy), ``nox -s tests-torch``.

CI (``.ci/run``) and the README's test command run ``nox -s tests-cpu tests-torch``.
"""

from __future__ import annotations

import os
import shutil

import nox

nox.options.sessions = ["tests-cpu", "tests-torch"]
nox.options.reuse_existing_virtualenvs = True

# pytest exits 5 when it selects no test (e.g. a -k that matches nothing); that is not a failure here.
PYTEST_OK = [0, 5]


@nox.session(name="tests-cpu")
def tests_cpu(session: nox.Session) -> None:
    """The whole suite on NumPy and on array-api-strict (strict proves only the standard is used)."""
    session.install("-e", ".[dev]")
    session.run("pytest", "--backends", "numpy,array_api_strict", *session.posargs, success_codes=PYTEST_OK)


def _has_cuda_device() -> bool:
    return shutil.which("nvidia-smi") is not None or os.path.exists("/dev/nvidia0")


@nox.session(name="tests-gpu")
def tests_gpu(session: nox.Session) -> None:
    """The suite on CuPy. Skips (does not fail) on a machine without a CUDA device.

    LSTMX_CUPY_EXTRA picks the CuPy wheel: cuda12 (default) or cuda13.
    """
    if not _has_cuda_device():
        session.skip("no CUDA device on this machine (no nvidia-smi, no /dev/nvidia0): the CuPy suite needs a GPU")
    extra = os.environ.get("LSTMX_CUPY_EXTRA", "cuda12")
    session.install("-e", f".[dev,{extra}]")
    session.run("pytest", "--backends", "cupy", *session.posargs, success_codes=PYTEST_OK)


@nox.session(name="tests-torch")
def tests_torch(session: nox.Session) -> None:
    """The PyTorch comparison tests (marked ``torch``) on every CPU backend, PyTorch tensors (``backend="torch"``)
    included, then the gradient checks on PyTorch tensors. torch is a test-only reference, never a dependency."""
    session.install("-e", ".[dev]", "torch==2.13.0")
    session.run("pytest", "-m", "torch", "--backends", "numpy,array_api_strict,torch", *session.posargs,
                success_codes=PYTEST_OK)
    session.run("pytest", "--backends", "torch", "tests/test_gradients.py", "tests/test_backends.py", *session.posargs,
                success_codes=PYTEST_OK)


@nox.session(name="mutation")
def mutation(session: nox.Session) -> None:
    """Mutation testing (mutmut) of the pure-Python modules named in pyproject.toml's [tool.mutmut]: each mutant
    (a changed constant, operator, argument, a dropped line) must make a test fail. Slow; CI does not run it.
    ``nox -s mutation`` runs every mutant; ``nox -s mutation -- "lstmx.training.optim*"`` the mutants of one module."""
    session.install("-e", ".[dev]", "mutmut==3.8.1")
    session.run("mutmut", "run", *session.posargs, success_codes=[0, 1])
    session.run("mutmut", "results")
