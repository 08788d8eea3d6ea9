"""Every script in examples/ runs as written (on data a package ships) and beats its stated baseline."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))
NEEDS = {"digits_classifier": "sklearn", "sunspots_forecaster": "statsmodels"}


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda path: path.stem)
def test_example_runs_and_beats_its_baseline(script, tmp_path):
    if importlib.util.find_spec(NEEDS[script.stem]) is None:
        pytest.skip(f"{script.name} needs {NEEDS[script.stem]} (the examples extra)")
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "baseline" in result.stdout


def test_every_example_is_listed_with_what_it_needs():
    assert {path.stem for path in EXAMPLES} == set(NEEDS)
