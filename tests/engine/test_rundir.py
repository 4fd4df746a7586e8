"""Run folders: no silent overwrite, resume only with the stored options, overwrite only runs."""

from pathlib import Path

import pytest

from edgeguard.cli import main
from edgeguard.engine.rundir import RUN_FILE, finish_run, prepare_run_dir
from edgeguard.errors import EdgeguardError, OutputExistsError, UsageError


def test_prepare_run_dir_rules(tmp_path: Path):
    out = tmp_path / "run"
    assert prepare_run_dir(out, "train", {"lr": 0.1}) == out and (out / RUN_FILE).is_file()
    (out / "model.safetensors").write_bytes(b"weights")
    finish_run(out)
    with pytest.raises(OutputExistsError, match=r"not empty; pass --resume .* --overwrite"):
        prepare_run_dir(out, "train", {"lr": 0.1})
    with pytest.raises(OutputExistsError, match=r"not empty; pass --overwrite"):
        prepare_run_dir(out, "train", {"lr": 0.1}, resumable=False)
    assert prepare_run_dir(out, "train", {"lr": 0.1}, resume=True) == out
    with pytest.raises(UsageError, match=r"other options \(lr: stored 0.1, given 0.2\)"):
        prepare_run_dir(out, "train", {"lr": 0.2}, resume=True)
    with pytest.raises(UsageError, match="holds a 'train' run, not 'prune'"):
        prepare_run_dir(out, "prune", {"lr": 0.1}, resume=True)
    assert (out / "model.safetensors").read_bytes() == b"weights"  # nothing touched so far
    prepare_run_dir(out, "train", {"lr": 0.2}, overwrite=True)
    assert not (out / "model.safetensors").exists()


def test_never_deletes_a_folder_that_is_not_a_run(tmp_path: Path):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(UsageError, match="not an edgeguard run folder"):
        prepare_run_dir(mine, "attack", {}, overwrite=True)
    with pytest.raises(UsageError, match="holds no run.json"):
        prepare_run_dir(mine, "train", {}, resume=True)
    assert (mine / "holiday.jpg").read_bytes() == b"precious"
    with pytest.raises(UsageError, match="is a file"):
        prepare_run_dir(mine / "holiday.jpg", "train", {})
    run = tmp_path / "run"
    prepare_run_dir(run, "tshirt eval", {})
    (run / "patch.png").write_bytes(b"p")
    with pytest.raises(UsageError, match="lies inside --out"):
        prepare_run_dir(run, "tshirt eval", {}, overwrite=True, inputs=(run / "patch.png",))
    assert issubclass(OutputExistsError, EdgeguardError)


def _saved(out: Path) -> tuple:
    """The saved model's tensors (as bytes) and metadata: safetensors orders metadata at random."""
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as fh:
        tensors = {k: fh.get_tensor(k).numpy().tobytes() for k in fh.keys()}  # noqa: SIM118
        return tensors, fh.metadata()


def test_cli_train_refuses_to_replace_a_finished_run(tmp_path: Path, capsys):
    out = tmp_path / "m"
    train = "-q train --model digits_cnn --dataset digits --epochs 1 --no-progress --out"
    base = [*train.split(), str(out)]
    assert main(base) == 0
    model = _saved(out)
    capsys.readouterr()
    assert main(base) == 2
    assert f"output folder {out} is not empty" in capsys.readouterr().err
    assert main([*base, "--resume", "--lr", "0.01"]) == 2
    assert "lr: stored 0.001, given 0.01" in capsys.readouterr().err
    assert _saved(out) == model
    assert main([*base, "--resume"]) == 0  # a finished run resumes to the same model
    assert _saved(out) == model
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main([*base[:-1], str(afile)]) == 2
    assert "is a file" in capsys.readouterr().err
