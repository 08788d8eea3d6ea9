"""The ``backend``/``xp`` fixtures: every test that takes one runs once per array backend.

Backends come from ``--backends`` (or the LSTMX_TEST_BACKENDS variable), comma-separated; the default runs
NumPy and array-api-strict, plus CuPy when a CUDA device is present. A backend that cannot run here (CuPy with
no GPU) is skipped with the reason, never failed.
"""

from __future__ import annotations

import os
import tempfile

import pytest

from lstmx.backend import BackendError, get_backend
from lstmx.dispatch.tuning import CACHE_VARIABLE

DEFAULT_BACKENDS = "numpy,array_api_strict,cupy"
# "auto" reads the choices lstmx tune measured; the tests see none but their own, never the machine's cache
os.environ[CACHE_VARIABLE] = os.path.join(tempfile.mkdtemp(prefix="lstmx-test-tune-"), "tune.json")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backends",
        default=os.environ.get("LSTMX_TEST_BACKENDS", DEFAULT_BACKENDS),
        help="comma-separated array backends for the backend/xp fixtures (numpy, array_api_strict, cupy)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        names = [n.strip() for n in metafunc.config.getoption("--backends").split(",") if n.strip()]
        metafunc.parametrize("backend", names, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest):
    try:
        return get_backend(request.param)
    except BackendError as error:
        pytest.skip(f"backend {request.param!r} unavailable here: {error}")


@pytest.fixture
def xp(backend):
    return backend.xp


@pytest.fixture(autouse=True, scope="session")
def _in_a_scratch_folder(tmp_path_factory: pytest.TempPathFactory):
    """The suite runs in a folder of its own, not in the checkout: a command's default output (``lstmx train``
    writes ``runs/default``) neither lands among the user's files nor meets a run the user made there (the
    README's main job writes ``runs/default`` in the checkout before its test command runs)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("cwd"))
        yield
