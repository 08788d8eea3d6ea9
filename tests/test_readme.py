"""Every Python block of the README runs as written, every ``lstmx`` command it shows parses, and every
implementation the registry has is named in it."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from lstmx import registry
from lstmx.cli import build_parser

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)
PYTHON = [code for language, code in BLOCKS if language == "python"]


@pytest.mark.parametrize("code", PYTHON, ids=[f"python-block-{k}" for k in range(len(PYTHON))])
def test_python_block_runs_as_written(code, tmp_path):
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def test_readme_has_the_blocks_it_promises():
    assert len(PYTHON) >= 2
    bash = [code for language, code in BLOCKS if language == "bash"]
    assert any("lstmx train" in code for code in bash) and any("nox -s tests-cpu tests-torch" in code for code in bash)


def test_every_lstmx_command_in_the_readme_parses():
    """Commands quoted inline (`lstmx ...` or `.venv/bin/lstmx ...`) name real subcommands and flags."""
    text = " ".join(README.read_text(encoding="utf-8").split())
    commands = re.findall(r"`(?:\.venv/bin/)?lstmx ((?:train|sample|check)[^`]*)`( prints `[^`]*`)?", text)
    assert len(commands) >= 4
    parser = build_parser()
    for command, printed in commands:
        argv = [word for word in shlex.split(command) if word != "..."]
        if len(argv) == 1:  # the command's name in a sentence, not an invocation
            continue
        if printed:  # an example of a refusal: it must be refused, with the message the README quotes
            with pytest.raises(SystemExit) as refused:
                parser.parse_args(argv)
            assert refused.value.code == 2
            continue
        parser.parse_args(argv)  # exits (fails the test) on an unknown flag or a bad value


def test_every_registered_implementation_is_named_in_the_readme():
    """The registry's layer, update and loss implementations each appear in the README as `name`."""
    text = README.read_text(encoding="utf-8")
    names = [impl.name for impl in (*registry.LAYER_IMPLS, *registry.UPDATE_IMPLS, *registry.LOSS_IMPLS)]
    assert [name for name in names if f"`{name}`" not in text] == []
