from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgeguard.cli import main
from edgeguard.settings import data_root

PERSONS = data_root() / "persons"  # EDGEGUARD_DATA, default ../shared/data


def test_train_prune_info_end_to_end(tmp_path: Path, capsys):
    out = tmp_path / "dense"
    train = "-q train --model digits_cnn --dataset digits --epochs 2 --no-progress --lr 3e-3"
    assert main([*train.split(), "--out", str(out)]) == 0
    assert "validation accuracy" in capsys.readouterr().out
    pruned = tmp_path / "kgs"
    options = "--scheme kgs --gm 4 --gn 4 --flops-reduction 2 --dataset digits --epochs 1"
    prune_argv = ["-q", "prune", str(out / "model.safetensors"), *options.split()]
    prune_argv += ["--out", str(pruned), "--no-progress"]
    rc = main(prune_argv)
    text = capsys.readouterr().out
    assert rc == 0 and "FLOPs reduction 2.0" in text and "fine-tuned" in text
    assert main(["info", str(pruned / "model.safetensors")]) == 0
    text = capsys.readouterr().out
    assert "features.2" in text and "kgs" in text and "total" in text
    # resuming a finished prune run reuses its stages: no stage file is rewritten, same model
    model_before = _saved(pruned / "model.safetensors")
    stages = {
        p: p.stat().st_mtime_ns
        for p in pruned.rglob("*")
        if p.is_file() and p.name not in ("run.json", "model.safetensors", "model.json")
    }
    assert stages
    assert main([*prune_argv, "--resume"]) == 0
    metadata, tensors = _saved(pruned / "model.safetensors")
    assert metadata == model_before[0]
    assert all(torch.equal(tensors[k], model_before[1][k]) for k in model_before[1])
    assert {p: p.stat().st_mtime_ns for p in stages} == stages


def _saved(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def test_cli_errors_are_clear(tmp_path: Path, capsys):
    assert main(["info", str(tmp_path / "missing.safetensors")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["-q", "train", "--dataset", "ucf101", "--out", str(tmp_path)]) == 2
    assert "local folder" in capsys.readouterr().err
    assert main(["prune"]) == 2  # argparse: one line, exit status 2
    capsys.readouterr()
    bad = ["-q", "train", "--model", "digits_cnn", "--dataset", "digits", "--diverge", "1"]
    assert main([*bad, "--out", str(tmp_path / "d")]) == 2
    assert "diverge must be 0 (off) or a factor > 1" in capsys.readouterr().err


@pytest.mark.slow  # the whole quick demo; make test-slow
def test_quick_demo_writes_a_report(tmp_path: Path):
    assert main(["-q", "demo", "--quick", "--out", str(tmp_path)]) == 0
    html = (tmp_path / "report.html").read_text()
    for png in (
        "training.png",
        "accuracy_vs_flops.png",
        "layer_density.png",
        "kgs_mask_conv3a.png",
        "speedup_vs_flops.png",
        "attack_grid.png",
    ):
        assert (tmp_path / png).stat().st_size > 1000 and png in html
    assert "KGS vs filter" in html and "Pruning methods" in html and "primal-proximal" in html
    assert "Sparse inference: compiled models" in html
    assert "Adversarial attacks on the digits CNN" in html
    assert "Explaining the attacks" in html
    assert "Adversarial T-shirt" in html
    if (PERSONS / "manifest.csv").is_file():
        assert "tshirt_patch.png" in html and (tmp_path / "tshirt_detections.png").is_file()
    assert "Pruning and compiling a real detector" in html
    assert "Graph robustness" in html and (tmp_path / "graph_accuracy_vs_budget.png").is_file()


def test_info_takes_an_input_shape(tmp_path: Path, capsys):
    from edgeguard.modelfile import save_model
    from edgeguard.models import build
    from edgeguard.sparsity import prune_model

    model = build("c3d", num_classes=4, width=0.125, clip_size=[16, 32, 32])
    prune_model(model, "vanilla", rates=0.5)
    path = save_model(model, tmp_path / "m.safetensors")  # records no input shape
    assert main(["info", str(path)]) == 2
    assert "--input-shape" in capsys.readouterr().err
    assert main(["info", str(path), "--input-shape", "1,3,16,32,32"]) == 0
    text = capsys.readouterr().out
    assert "conv2" in text and "50.0%" in text
    assert main(["info", str(path), "--input-shape", "1,x"]) == 2


def test_prune_methods_from_the_cli(tmp_path: Path, capsys):
    out = tmp_path / "dense"
    common = ["--dataset", "digits", "--no-progress", "--lr", "3e-3"]
    assert (
        main(["-q", "train", "--model", "digits_cnn", "--epochs", "2", "--out", str(out), *common])
        == 0
    )
    for method, extra in (("reweighted", ["--method-option", "lam=1e-4"]), ("primal-proximal", [])):
        rc = main(
            [
                "-q",
                "prune",
                str(out / "model.safetensors"),
                "--method",
                method,
                *extra,
                "--flops-reduction",
                "2",
                "--reg-epochs",
                "1",
                "--epochs",
                "1",
                "--out",
                str(tmp_path / method),
                *common,
            ]
        )
        text = capsys.readouterr().out
        assert rc == 0 and f"{method} / " in text and "FLOPs reduction 2.0" in text
    args = [
        "--rate",
        "0.7",
        "--epochs",
        "1",
        "--lr",
        "1e-9",
        "--dataset",
        "digits",
        "--no-progress",
    ]
    hard = {}
    for n in (0, 256):  # the same magnitude masks, with and without re-solved weights
        dest = ["--out", str(tmp_path / f"rec{n}")]
        rc = main(
            ["-q", "prune", str(out / "model.safetensors"), "--reconstruct", str(n), *args, *dest]
        )
        text = capsys.readouterr().out
        assert rc == 0
        hard[n] = float(text.split("hard-pruned ")[1].split("%")[0])
    assert hard[256] > hard[0]
    dest = ["--out", str(tmp_path / "reselect")]
    assert main(["-q", "prune", str(out / "model.safetensors"), "--reselect", *args, *dest]) == 2
    assert "--reconstruct N" in capsys.readouterr().err
    reselect = ["--reconstruct", "256", "--reselect", *args, *dest]
    rc = main(["-q", "prune", str(out / "model.safetensors"), *reselect])
    assert rc == 0 and "hard-pruned" in capsys.readouterr().out
    assert (
        main(
            [
                "-q",
                "prune",
                str(out / "model.safetensors"),
                "--method",
                "admm",
                "--method-option",
                "rho=0",
                "--rate",
                "0.5",
                "--dataset",
                "digits",
            ]
        )
        == 2
    )
    assert "rho" in capsys.readouterr().err


def test_compile_prints_decisions_latency_and_checks_onnx(tmp_path: Path, capsys):
    from edgeguard.modelfile import save_model
    from edgeguard.models import build
    from edgeguard.sparsity import prune_model

    torch.manual_seed(0)
    model = build("c3d", num_classes=4, width=0.125, clip_size=[16, 16, 16])
    prune_model(model, "kgs", rates=0.7)
    path = save_model(model, tmp_path / "m.safetensors", extra={"input_shape": [1, 3, 16, 16, 16]})
    onnx_path = tmp_path / "m.onnx"
    args = ["compile", str(path), "--backend", "torch", "--bench", "--repeats", "2"]
    assert main([*args, "--onnx", str(onnx_path)]) == 0
    out = capsys.readouterr().out
    assert "conv3a" in out and "sparse" in out
    err = float(out.split("max relative error against the masked model: ")[1].split()[0])
    assert err <= 1e-4
    assert "end to end: dense" in out and "fewer MACs" in out
    ort_err = float(
        out.split("ONNX Runtime max relative error against the masked model: ")[1].split()[0]
    )
    assert ort_err <= 1e-4 and onnx_path.stat().st_size > 0
    assert main(["compile", str(path), "--backend", "tpu"]) == 2  # argparse: unknown backend


def test_attack_prints_success_distortion_queries_and_saves_a_grid(tmp_path: Path, capsys):
    train = "-q train --model digits_cnn --dataset digits --epochs 3 --no-progress --out"
    assert main([*train.split(), str(tmp_path / "m")]) == 0
    ckpt = str(tmp_path / "m" / "model.safetensors")
    args = ["attack", "--model", ckpt, "--num", "60", "--out", str(tmp_path / "a")]
    assert main([*args, "--attack", "pgd", "--eps", "0.2", "--steps", "10"]) == 0
    out = capsys.readouterr().out
    rate = float(out.split("success rate: ")[1].split()[0])
    assert rate > 0.5 and "mean linf distortion" in out and "mean queries: 11.0" in out
    assert (tmp_path / "a" / "pgd_grid.png").stat().st_size > 1000
    assert main([*args, "--attack", "pgd"]) == 2  # the folder holds a finished run
    assert "is not empty; pass --overwrite" in capsys.readouterr().err
    args.append("--overwrite")
    assert (
        main(
            [
                *args,
                "--attack",
                "zo-signsgd",
                "--eps",
                "0.2",
                "--attack-option",
                "q=10",
                "--attack-option",
                "max_queries=300",
            ]
        )
        == 0
    )
    assert "mean queries" in capsys.readouterr().out
    assert main([*args, "--attack", "cw", "--eps", "0.1"]) == 2
    assert "takes no --eps" in capsys.readouterr().err
    assert main([*args, "--attack", "deepfool"]) == 2
    assert "unknown attack 'deepfool'" in capsys.readouterr().err
    assert main([*args, "--attack", "pgd", "--eps", "-1"]) == 2
    assert "--eps: the value must be a finite number >= 0" in capsys.readouterr().err
    assert main([*args, "--attack", "pgd", "--eps", "nan"]) == 2
    assert "--eps: the value must be a finite number >= 0, got nan" in capsys.readouterr().err
    assert main([*args, "--attack", "pgd", "--attack-option", "eps=nan"]) == 2
    assert "eps must be a finite number >= 0, got nan" in capsys.readouterr().err


@pytest.mark.slow  # trains a concept CNN; explain: tests/explain
def test_explain_on_the_concept_cnn_with_synthetic_dissection(tmp_path: Path, capsys):
    assert (
        main(
            [
                "-q",
                "train",
                "--model",
                "concept_cnn",
                "--dataset",
                "synthetic-concepts",
                "--data-option",
                "num_samples=600",
                "--epochs",
                "4",
                "--no-progress",
                "--out",
                str(tmp_path / "m"),
            ]
        )
        == 0
    )
    ckpt = str(tmp_path / "m" / "model.safetensors")
    args = [
        "-q",
        "explain",
        "--model",
        ckpt,
        "--data",
        "synthetic-concepts",
        "--num",
        "24",
        "--out",
        str(tmp_path / "x"),
    ]
    assert (
        main(
            [
                *args,
                "--attack",
                "fgsm,pgd",
                "--eps",
                "0.05",
                "--concepts",
                "synthetic",
                "--concept-images",
                "120",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "unit PSE at 'classifier' (exact)" in out and "dissection of 'features.20'" in out
    assert (tmp_path / "x" / "report.html").is_file()
    assert (tmp_path / "x" / "sensitivity_vs_iou.png").stat().st_size > 5000
    args.append("--overwrite")
    assert main([*args, "--attack", "pgd", "--layer", "conv9"]) == 2
    assert "no layer named 'conv9' in this model; valid layers: features" in capsys.readouterr().err
    assert main([*args, "--attack", "deepfool"]) == 2
    assert main([*args, "--attack", "pgd", "--concepts", str(tmp_path / "nope")]) == 2
    assert "missing" in capsys.readouterr().err


@pytest.mark.slow  # robust training epochs; CLI wiring: the poisoning test
def test_gnn_attack_and_robust_training_on_a_synthetic_graph(tmp_path: Path, capsys):
    args = ["-q", "gnn", "--dataset", "synthetic:400", "--epochs", "30", "--out", str(tmp_path)]
    assert main([*args[:2], "attack", *args[2:], "--attack", "gta,random", "--budget", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "clean test accuracy" in out and "gta: accuracy" in out and "random: accuracy" in out
    assert main([*args[:2], "robust-train", *args[2:], "--inner", "gta", "--attack", "gta"]) == 0
    out = capsys.readouterr().out
    assert "s per epoch" in out and (tmp_path / "model.safetensors").is_file()
    from edgeguard.modelfile import load_model

    gcn, _, spec = load_model(tmp_path / "model.safetensors")  # rebuilt from the file alone
    assert spec["arch"]["name"] == "gcn" and spec["extra"]["inner"] == "gta"
    assert gcn.__class__.__name__ == "GCN"
    assert main([*args[:2], "attack", *args[2:], "--budget", "2"]) == 2
    assert (
        "--budget: the value must be a finite number in (0, 1], got 2.0" in capsys.readouterr().err
    )
    assert main([*args[:2], "attack", *args[2:], "--attack", "nettack"]) == 2
    assert main([*args[:2], "attack", "--dataset", "cora", "--data-root", str(tmp_path)]) == 2
    assert "missing ind.cora" in capsys.readouterr().err


def test_gnn_on_a_gnn_meta_attack_npz_with_a_pre_attacked_adjacency(tmp_path: Path, capsys):
    import numpy as np
    import scipy.sparse as sp

    from edgeguard.data.graphs import synthetic_graph

    g = synthetic_graph(300, feature_dim=16, seed=0)
    n = g.num_nodes
    adj = sp.csr_matrix((np.ones(g.edge_index.shape[1]), g.edge_index.numpy()), shape=(n, n))
    attr = sp.csr_matrix((g.x > 0.5).numpy().astype(np.float32))
    np.savez(
        tmp_path / "toy.npz",
        **{
            f"adj_{k}": v
            for k, v in zip(
                ("data", "indices", "indptr"), (adj.data, adj.indices, adj.indptr), strict=True
            )
        },
        adj_shape=np.array(adj.shape),
        **{
            f"attr_{k}": v
            for k, v in zip(
                ("data", "indices", "indptr"), (attr.data, attr.indices, attr.indptr), strict=True
            )
        },
        attr_shape=np.array(attr.shape),
        labels=g.y.numpy(),
    )
    args = ["-q", "gnn", "attack", "--dataset", str(tmp_path / "toy.npz"), "--epochs", "20"]
    assert main([*args, "--attack", "random", "--out", str(tmp_path / "a")]) == 0
    assert "toy.npz: " in capsys.readouterr().out
    sp.save_npz(tmp_path / "attacked.npz", sp.csr_matrix((5, 5)))
    assert (
        main([*args, "--adjacency", str(tmp_path / "attacked.npz"), "--out", str(tmp_path / "b")])
        == 2
    )
    assert "does not fit the" in capsys.readouterr().err
    cora = ["-q", "gnn", "attack", "--dataset", "cora", "--adjacency", "x.npz"]
    assert main([*cora, "--out", str(tmp_path / "c")]) == 2
    assert "--adjacency goes with a gnn-meta-attack .npz" in capsys.readouterr().err


def test_gnn_poisoning_and_minmax_robust_training(tmp_path: Path, capsys):
    args = ["-q", "gnn", "--dataset", "synthetic:300", "--epochs", "20", "--out", str(tmp_path)]
    assert main([*args[:2], "attack", *args[2:], "--attack", "gta", "--mode", "poisoning"]) == 0
    out = capsys.readouterr().out
    assert "gta (poisoning, retrained): accuracy" in out and "(evasion)" in out
    meta = ["--attack", "metattack", "--mode", "poisoning", "--budget", "0.01"]
    assert main([*args[:2], "attack", *args[2:], *meta]) == 0
    assert "metattack (poisoning, retrained): accuracy" in capsys.readouterr().out
    assert (
        main(
            [
                *args[:2],
                "robust-train",
                *args[2:],
                "--inner",
                "gta,random",
                "--weighting",
                "minmax",
                "--attack",
                "gta",
                "--select",
                "attacked-val",
            ]
        )
        == 0
    )
    assert "final minmax weights over gta,random" in capsys.readouterr().out
    train_only = ["--inner", "gta", "--cover", "train", "--overwrite"]
    assert main([*args[:2], "robust-train", *args[2:], *train_only]) == 0
    # synthetic features are continuous: feature flips are refused with the reason
    assert main([*args[:2], "attack", *args[2:], "--attack", "pgd-features"]) == 2
    assert "binary" in capsys.readouterr().err
    assert main([*args[:2], "robust-train", *args[2:], "--mode", "poisoning"]) == 2


@pytest.mark.slow  # HOG patch training; CLI wiring: the COCO detector test
@pytest.mark.skipif(
    not (PERSONS / "manifest.csv").is_file(), reason=f"{PERSONS} absent (EDGEGUARD_DATA)"
)
def test_tshirt_train_and_eval_on_a_few_photos(tmp_path: Path, capsys):
    common = ["--limit", "12", "--eval-samples", "1", "--out", str(tmp_path), "--overwrite"]
    assert main(["-q", "tshirt", "train", "--steps", "2", "--batch", "2", *common]) == 0
    out = capsys.readouterr().out
    assert "hog vs opencv: ASR" in out and "random noise vs hog: ASR" in out
    for name in ("patch.png", "patch.safetensors", "asr.json", "report.html", "detections.png"):
        assert (tmp_path / name).is_file()
    for row in json.loads((tmp_path / "asr.json").read_text()):
        lo, hi = (float(v) for v in row["95% CI"].split("-"))  # persons resampled
        assert lo <= row["ASR %"] <= hi
    args = [
        "-q",
        "tshirt",
        "eval",
        "--patch",
        str(tmp_path / "patch.safetensors"),
        "--eval-detectors",
        "opencv",
        *common,
    ]
    assert main(args) == 2  # --overwrite would delete the patch it reads
    assert "lies inside --out" in capsys.readouterr().err
    args[-2] = str(tmp_path / "eval")
    assert main(args) == 0
    assert "patch.safetensors vs opencv" in capsys.readouterr().out
    assert main(["-q", "tshirt", "train", "--zo", "--steps", "1", *common]) == 0
    assert "zo-opencv vs hog" in capsys.readouterr().out
    from safetensors.torch import load_file

    assert load_file(str(tmp_path / "patch.safetensors"))["patch"].shape == (3, 80, 56)
    square = ["--shape", "square", "--size", "24", "--eval-detectors", "hog"]
    assert main(["-q", "tshirt", "train", "--steps", "1", *square, *common]) == 0
    assert load_file(str(tmp_path / "patch.safetensors"))["patch"].shape == (3, 24, 24)
    capsys.readouterr()
    # bad input: no patch for eval, a patch larger than the torso, an unknown detector
    assert main(["-q", "tshirt", "eval", *common]) == 2
    assert "--patch" in capsys.readouterr().err
    assert main(["-q", "tshirt", "train", "--scale", "1.5", *common]) == 2
    assert "--scale: the value must be a finite number in (0, 1]" in capsys.readouterr().err
    assert main(["-q", "tshirt", "train", "--detector", "detr", *common]) == 2
    assert "unknown detector" in capsys.readouterr().err
    assert main(["-q", "tshirt", "train", "--size", "8x", *common]) == 2
    assert "--size is N or HxW" in capsys.readouterr().err


def test_tshirt_against_a_coco_detector_on_whole_photos(tmp_path: Path, capsys, shared_data):
    from edgeguard.models.detectors import weights

    if not weights.available():
        pytest.skip(f"COCO detector weights absent under {weights.models_dir()} (make models)")
    data = str(shared_data("persons"))
    common = [
        "--data",
        data,
        "--limit",
        "6",
        "--eval-samples",
        "1",
        "--detector",
        "nanodet",
        "--eval-detectors",
        "nanodet",
    ]
    assert (
        main(
            [
                "-q",
                "tshirt",
                "train",
                "--steps",
                "1",
                "--batch",
                "2",
                *common,
                "--out",
                str(tmp_path / "t"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "whole photos:" in out and "nanodet vs nanodet: ASR" in out
    assert (tmp_path / "t" / "detections.png").stat().st_size > 1000
    assert (
        main(
            [
                "-q",
                "tshirt",
                "train",
                "--zo",
                "--steps",
                "1",
                *common,
                "--detector",
                "nanodet,hog",
                "--out",
                str(tmp_path / "z"),
            ]
        )
        == 2
    )
    assert "--zo attacks one detector" in capsys.readouterr().err
    # Thys et al.'s transformations: trained and evaluated under them, named in the report
    thys = ["-q", "tshirt", "train", "--thys", "--steps", "1", "--batch", "2", *common]
    assert main([*thys, "--out", str(tmp_path / "y")]) == 0
    assert "Thys et al. + EOT" in (tmp_path / "y" / "report.html").read_text()
    assert main([*thys, "--rigid", "--out", str(tmp_path / "w")]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_prune_detector_distils_on_a_few_photos_and_resumes(tmp_path: Path, capsys, shared_data):
    from edgeguard.modelfile import load_model
    from edgeguard.models.detectors import get_detector, weights
    from edgeguard.sparsity import get_masks

    if not weights.available():
        pytest.skip(f"COCO detector weights absent under {weights.models_dir()} (make models)")
    data = str(shared_data("persons"))
    out = tmp_path / "pd"
    args = ["-q", "prune-detector", "nanodet", "--flops-reduction", "1.5", "--persons", data]
    args += ["--photos", "4", "--epochs", "1", "--batch-size", "2", "--out", str(out)]
    assert main([*args, "--reconstruct", "2", "--reselect", "--no-progress", "--person-only"]) == 0
    text = capsys.readouterr().out
    assert "held-out person AP50 dense" in text and "MAC reduction 1.5" in text
    assert "keep_classes([0])" in text  # a person detector: the class head was cut
    person = get_detector("nanodet").keep_classes([0])
    net, _, spec = load_model(out / "model.safetensors", model=person.net)
    assert get_masks(net) and spec["extra"]["detector"] == "nanodet"
    assert spec["extra"]["distilled_classes"] == "person" and spec["extra"]["classes"] == [0]
    # a finished run is not overwritten; resuming it with the same options is allowed
    assert main([*args, "--reconstruct", "2", "--reselect", "--no-progress", "--person-only"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    # bad input: reselect without reconstruction, an empty image folder, an unknown detector
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*args[:-1], str(tmp_path / "x"), "--reselect"]) == 2
    assert "--reconstruct N" in capsys.readouterr().err
    assert main([*args[:-1], str(tmp_path / "y"), "--images", str(empty)]) == 2
    assert "no readable images" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("not a video")
    assert main([*args[:-1], str(tmp_path / "v"), "--images", str(tmp_path / "notes.txt")]) == 2
    assert "no frames could be decoded" in capsys.readouterr().err
    cut = [*args[:4], "1.01", *args[5:-1], str(tmp_path / "z"), "--person-only"]
    assert main(cut) == 2  # the head's cut alone reaches 1.01x
    assert "already meets a 1.01x target" in capsys.readouterr().err
    assert main(["-q", "prune-detector", "detr", "--flops-reduction", "2"]) == 2
    assert "detr" in capsys.readouterr().err
    hog = ["-q", "prune-detector", "hog", "--flops-reduction", "2", "--out", str(tmp_path / "h")]
    assert main(hog) == 2
    assert "centernet or nanodet" in capsys.readouterr().err and not (tmp_path / "h").exists()
