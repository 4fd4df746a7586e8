"""Every benchmark command the docs show still parses: the script imports and its argument parser
accepts the documented arguments (nothing is run past ``parse_args``; the archive page is history
and is not checked)."""

from __future__ import annotations

import argparse
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SPAN = re.compile(r"`([^`]*?benchmarks/\w+\.py[^`]*)`")


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(where, script, arguments) of every inline-code command naming a benchmark script."""
    found = {}
    for doc in DOCS:
        if doc.name == "benchmarks-archive.md":
            continue
        for m in SPAN.finditer(doc.read_text()):
            words = [w for w in shlex.split(" ".join(m.group(1).split())) if w != "..."]
            (at,) = [i for i, w in enumerate(words) if re.fullmatch(r"benchmarks/\w+\.py", w)]
            found.setdefault((words[at], tuple(words[at + 1 :])), doc.name)
    return [(doc, script, list(args)) for (script, args), doc in found.items()]


class _Parsed(Exception):
    pass


@pytest.mark.parametrize(("doc", "script", "args"), documented_commands())
def test_documented_benchmark_command_parses(doc, script, args, monkeypatch):
    path = ROOT / script
    assert path.is_file(), f"{doc} names {script}, which does not exist"
    text = path.read_text()
    if "import torch" not in text and "edgeguard" not in text:
        pytest.skip(
            f"{script} runs in its own environment (it imports neither torch nor edgeguard)"
        )
    real = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, argv=None, namespace=None):
        real(self, argv, namespace)  # exits 2 with argparse's message on a bad argument
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
    monkeypatch.setattr(sys, "argv", [str(path), *args])
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    if "ArgumentParser" not in text:
        assert not args, f"{doc}: {script} takes no arguments, the docs pass {args}"
        runpy.run_path(str(path), run_name="imported_only")
        return
    with pytest.raises(_Parsed):
        runpy.run_path(str(path), run_name="__main__")


def test_the_docs_show_benchmark_commands():
    scripts = {s for _, s, _ in documented_commands()}
    assert {"benchmarks/sparse_inference.py", "benchmarks/graph_robustness.py"} <= scripts
