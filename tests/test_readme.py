"""Every Python block of the README and of docs/*.md runs as written, every ``lstmx`` command they show parses,
every implementation the registry has is named in the README, the README stays a front door (at most 200
lines) whose links resolve, and docs/benchmarks.md is what bench/report.py makes of docs/results/."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from lstmx.dispatch import registry
from lstmx.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)
PYTHON = [(page, code) for page in PAGES
          for language, code in re.findall(r"```(\w+)\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.DOTALL)
          if language == "python"]


@pytest.mark.parametrize("page,code", PYTHON, ids=[f"{page.stem}-python-block-{k}" for k, (page, _) in enumerate(PYTHON)])
def test_python_block_runs_as_written(page, code, tmp_path):
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def test_readme_has_the_blocks_it_promises():
    assert len([page for page, _ in PYTHON if page == README]) >= 2
    bash = [code for language, code in BLOCKS if language == "bash"]
    assert any("lstmx train" in code for code in bash) and any("nox -s tests-cpu tests-torch" in code for code in bash)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.stem)
def test_every_lstmx_command_in_the_docs_parses(page):
    """Commands quoted inline (`lstmx ...` or `.venv/bin/lstmx ...`) name real subcommands and flags."""
    text = " ".join(page.read_text(encoding="utf-8").split())
    commands = re.findall(r"`(?:\.venv/bin/)?lstmx ((?:train|sample|export|check)[^`]*)`( prints `[^`]*`)?", text)
    assert len(commands) >= (4 if page == README else 0)
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


def test_the_readme_is_a_front_door_whose_links_resolve():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#]+\.md)\)", page.read_text(encoding="utf-8")):
            assert (page.parent / target).is_file(), f"{page.name} links to {target}, which does not exist"


def test_the_benchmark_page_is_generated_from_the_kept_json():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "report.py"), "--check"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
