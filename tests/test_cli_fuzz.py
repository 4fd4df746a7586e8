"""CLI fuzz test: for every subcommand, random bad values of each option (0, negative, NaN, Inf,
empty, a file, a folder, text where a number goes, ...) end either in exit status 2 with one line
on stderr, or in a valid run; never in a traceback.  The library's long work (training, attacks,
compilation, the demo) is replaced by a stub that stops the run as soon as it is reached, so the
test stays fast and checks what happens before the work starts: parsing and validation."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeguard.cli import build_parser, main


class ReachedWork(Exception):
    """The run got past validation into the library's work (the stub stops it there)."""


def _stop(*args, **kwargs):
    raise ReachedWork


STUBS = [
    ("edgeguard.engine.fit", None),
    ("edgeguard.prune.run_pruning", None),
    ("edgeguard.compiler.compile_model", None),
    ("edgeguard.attacks.base.Attack.run", None),
    ("edgeguard.explain.explain_attacks", None),
    ("edgeguard.defenses.graph.robust_train", None),
    ("edgeguard.attacks.graph.poison", None),
    ("edgeguard.attacks.patch.tshirt.AdversarialTShirt.train", None),
    ("edgeguard.attacks.patch.zo.ZOTShirt.train", None),
    ("edgeguard.attacks.patch.study.evaluate_patches", None),
    ("edgeguard.demo.run_demo", None),
]

COUNTER = itertools.count()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A saved digits model, a plain file and a non-empty folder (that is not a run)."""
    from edgeguard.modelfile import save_model
    from edgeguard.models import build

    root = tmp_path_factory.mktemp("fuzz")
    torch.manual_seed(0)
    ckpt = save_model(
        build("digits_cnn"), root / "m.safetensors", extra={"input_shape": [1, 1, 8, 8]}
    )
    afile = root / "afile.txt"
    afile.write_text("not what any option wants\n")
    folder = root / "folder"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    return {"ckpt": str(ckpt), "file": str(afile), "folder": str(folder), "root": root}


TRAIN = "train --model digits_cnn --dataset digits --epochs 1 --no-progress --out"
PRUNE = "--rate 0.5 --dataset digits --epochs 1 --no-progress --out"


def _base(command: str, files, out: str) -> list[str]:
    ckpt = files["ckpt"]
    return {
        "train": [*TRAIN.split(), out],
        "prune": ["prune", ckpt, *PRUNE.split(), out],
        "info": ["info", ckpt],
        "compile": ["compile", ckpt, "--backend", "torch"],
        "attack": ["attack", "--model", ckpt, "--num", "4", "--out", out],
        "explain": ["explain", "--model", ckpt, "--num", "4", "--out", out],
        "gnn": ["gnn", "attack", "--dataset", "synthetic:200", "--epochs", "2", "--out", out],
        "tshirt": ["tshirt", "train", "--limit", "2", "--steps", "1", "--out", out],
        "demo": ["demo", "--quick", "--out", out],
    }[command]


def _options(command: str) -> list[tuple[str, bool]]:
    """(flag, takes a value) of every option of ``command``, positionals excluded."""
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    return [
        (a.option_strings[-1], a.nargs != 0)
        for a in sub._actions
        if a.option_strings and a.dest != "help"
    ]


BAD = [
    "0",
    "-1",
    "-0.5",
    "nan",
    "inf",
    "-inf",
    "",
    "abc",
    "1e999",
    "2",
    "0.5",
    "1,2",
    "x=1",
    "FILE",
    "FOLDER",
]


def _run(argv: list[str], capsys) -> tuple[str, int | None, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except ReachedWork:
        return "work", None, ""
    except SystemExit as err:
        code = err.code
    return "exit", code, capsys.readouterr().err


@pytest.mark.parametrize(
    "command", ["train", "prune", "info", "compile", "attack", "explain", "gnn", "tshirt", "demo"]
)
def test_bad_option_values_end_in_one_line_or_a_valid_run(command, files, capsys, monkeypatch):
    for target, _ in STUBS:
        monkeypatch.setattr(target, _stop)
    # a fuzzed relative --out (e.g. "nan") lands in the temp folder
    monkeypatch.chdir(files["root"])
    options = _options(command)

    @settings(
        max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    @given(option=st.sampled_from(options), value=st.sampled_from(BAD))
    def check(option, value):
        out = str(files["root"] / f"out{next(COUNTER)}")
        value = {"FILE": files["file"], "FOLDER": files["folder"]}.get(value, value)
        flag, takes_value = option
        argv = ["-q", *_base(command, files, out), flag, *([value] if takes_value else [])]
        kind, code, err = _run(argv, capsys)
        if kind == "exit" and code != 0:
            lines = [line for line in err.splitlines() if line.strip()]
            assert code == 2 and len(lines) == 1 and "error:" in lines[0], (argv, code, err)
        assert Path(files["folder"], "precious.txt").read_text() == "keep me"

    check()


@pytest.mark.parametrize(
    "argv",
    [
        ["gnn", "attack", "--dataset", "synthetic:200", "--hidden", "0"],
        ["gnn", "robust-train", "--dataset", "synthetic:200", "--inner-budget", "0"],
        ["compile", "CKPT", "--threads", "0"],
        ["compile", "CKPT", "--threads", "-1"],
        ["compile", "CKPT", "--repeats", "0"],
        ["compile", "CKPT", "--input-shape", "1,3,8,8"],
        ["info", "CKPT", "--input-shape", "1,3,8,8"],
        ["attack", "--model", "CKPT", "--num", "0"],
        ["attack", "--model", "CKPT", "--eps", "nan"],
        ["attack", "--model", "CKPT", "--attack", "cw", "--attack-option", "c=nan"],
        ["attack", "--model", "CKPT", "--attack", "zo-signsgd", "--attack-option", "q=0"],
        ["attack", "--model", "CKPT", "--attack-option", "colour=red"],
        ["attack", "--model", "CKPT", "--data-option", "colour=red"],
        ["attack", "--model", "CKPT", "--data", "synthetic-concepts"],
        ["explain", "--model", "CKPT", "--eps", "nan"],
        ["train", "--model", "c3d", "--dataset", "digits"],
        [
            "prune",
            "CKPT",
            "--rate",
            "0.5",
            "--dataset",
            "synthetic-concepts",
            "--data-option",
            "num_samples=8",
        ],
        ["tshirt", "eval", "--eval-samples", "0"],
    ],
)
def test_known_bad_input_is_exit_2_with_one_line(argv, files, capsys, monkeypatch):
    for target, _ in STUBS:
        if target != "edgeguard.compiler.compile_model":  # it checks the shape itself (fast here)
            monkeypatch.setattr(target, _stop)
    argv = [files["ckpt"] if a == "CKPT" else a for a in argv]
    out = ["--out", str(files["root"] / f"out{next(COUNTER)}")]
    takes_out = argv[0] not in ("compile", "info")
    kind, code, err = _run(["-q", *argv, *(out if takes_out else [])], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert kind == "exit" and code == 2 and len(lines) == 1, (argv, kind, code, err)


def test_model_and_data_mismatch_names_both_shapes(files, capsys):
    out = str(files["root"] / f"out{next(COUNTER)}")
    code = main(
        [
            "-q",
            "attack",
            "--model",
            files["ckpt"],
            "--data",
            "synthetic-concepts",
            "--data-option",
            "num_samples=8",
            "--out",
            out,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "of shape (1, 3, 32, 32) does not fit the model 'digits_cnn'" in err
    assert "the model was saved for inputs of shape (1, 1, 8, 8)" in err
