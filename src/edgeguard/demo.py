"""The built-in demo: train a small C3D on synthetic moving-shape videos, prune it with KGS and with
filter pruning at the same FLOPs reduction, fine-tune both, compile both to sparse code and time
them, compare the pruning methods on the digits CNN, and write an HTML report with the per-layer
tables and plots, attack the digits CNN (white-box and black-box), and explain those attacks
(promotion/suppression, CAM, network dissection of a CNN trained on synthetic concept images), and
attack a GCN's topology before and after min-max robust training, and train an adversarial T-shirt
patch against the COCO-trained CenterNet on whole real photographs (when the shared persons photos
and the fetched detector weights are there; the HOG port on person crops without the weights).
Needs no other files; later capabilities add their sections here."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import Dataset, TensorDataset

from .data import SyntheticMovingShapes
from .engine import TrainConfig, evaluate, fit, seed_everything
from .masks import mask_of
from .models import build, count_flops
from .prune import get_pruner, run_pruning
from .report import Report, plots
from .settings import data_root
from .sparsity import save_pruned
from .sparsity.summary import HEADERS, layer_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo run (defaults: about 5 minutes on 2 CPU cores)."""

    train_clips: int = 2400
    val_clips: int = 600
    frames: int = 16
    size: int = 32
    width: float = 0.125
    epochs: int = 12
    lr: float = 5e-4
    warmup_epochs: float = 1.0
    finetune_epochs: int = 3
    finetune_lr: float = 2e-4
    flops_reduction: float = 2.5
    seed: int = 0
    # pruning-method comparison on the digits CNN
    methods_target: float = 3.6
    digits_epochs: int = 12
    methods_reg_epochs: int = 10
    methods_finetune_epochs: int = 6
    # explanation section
    explain_samples: int = 40
    concept_images: int = 1500
    concept_epochs: int = 8
    # graph section
    graph_nodes: int = 1000
    graph_epochs: int = 100
    graph_budgets: tuple[float, ...] = (0.02, 0.05, 0.1)
    # T-shirt section (needs the shared persons photos; skipped with the reason when absent)
    persons_root: str = ""  # default: edgeguard.settings.data_root() / "persons"
    tshirt_photos: int = 40
    tshirt_steps: int = 40


QUICK = DemoSettings(
    train_clips=96,
    val_clips=48,
    epochs=1,
    warmup_epochs=0.0,
    finetune_epochs=1,
    digits_epochs=1,
    methods_reg_epochs=1,
    methods_finetune_epochs=1,
    explain_samples=12,
    concept_images=200,
    concept_epochs=1,
    graph_nodes=300,
    graph_epochs=5,
    graph_budgets=(0.05,),
    tshirt_photos=10,
    tshirt_steps=2,
)


def compare_methods(s: DemoSettings, out: Path, rep: Report) -> torch.nn.Module:
    """Every pruning method at one FLOPs target on the digits CNN (seconds on 2 cores); returns the
    dense digits CNN."""
    from .data import digits

    seed_everything(s.seed)
    train, val = digits(True), digits(False)
    model = build("digits_cnn")
    fit(model, train, None, TrainConfig(epochs=s.digits_epochs, lr=3e-3, seed=s.seed))
    reg = TrainConfig(epochs=s.methods_reg_epochs, lr=1e-3, seed=s.seed)
    ft = TrainConfig(epochs=s.methods_finetune_epochs, lr=1e-3, seed=s.seed)
    rows, bars = [], {}
    for method, scheme in (
        ("magnitude", "kgs"),
        ("reweighted", "kgs"),
        ("admm", "kgs"),
        ("magnitude", "filter"),
        ("primal-proximal", None),
    ):
        log.info("digits: %s pruning to %.1fx", method, s.methods_target)
        pruner = (
            get_pruner(method, scheme, gm=8, gn=4)
            if scheme == "kgs"
            else get_pruner(method, scheme)
        )
        # RT3D regularises with SGD: with Adam the normalised penalty gradient does little
        method_reg = replace(reg, optimizer="sgd", lr=1e-2) if method == "reweighted" else reg
        res = run_pruning(
            model,
            pruner,
            train,
            val,
            (1, 1, 8, 8),
            flops_reduction=s.methods_target,
            regularize=method_reg if pruner.regularizes else None,
            finetune=ft,
        )
        name = f"{method} / {getattr(pruner, 'structure', pruner.scheme.name)}"
        rows.append(
            (
                name,
                f"{res.flops.reduction:.2f}x",
                res.accuracy_dense,
                res.accuracy_pruned,
                res.accuracy_finetuned,
            )
        )
        bars[name] = res.accuracy_finetuned
    rep.heading(f"Pruning methods at {s.methods_target}x fewer MACs (digits CNN)")
    rep.paragraph(
        f"Regularisation {s.methods_reg_epochs} epochs (methods that have one), hard pruning, then "
        f"{s.methods_finetune_epochs} fine-tuning epochs for every method; one seed. "
        "benchmarks/pruning_accuracy.py gives means over seeds and the Torch-Pruning peer."
    )
    rep.table(
        [
            "method / structure",
            "FLOPs reduction",
            "acc. dense",
            "acc. hard-pruned",
            "acc. fine-tuned",
        ],
        rows,
    )
    plots.method_bars(bars, rows[0][2], out / "methods.png")
    rep.figure("methods.png", "Accuracy after fine-tuning per pruning method (dashed: dense).")
    return model


def compile_section(
    s: DemoSettings, out: Path, rep: Report, outcomes: dict, val, shape, quick: bool
) -> None:
    """Compile the pruned demo models and measure speedup against MAC reduction."""
    from torch import nn

    from .compile import compile_model
    from .compile.bench import paired_ms
    from .sparsity import get_scheme

    rep.heading("Sparse inference: compiled models")
    threads = torch.get_num_threads()
    rows = []
    backend = "torch" if quick else "auto"  # quick (smoke-test) runs skip the C++ builds
    for name, res in outcomes.items():
        compiled = compile_model(res.model, backend, input_shape=shape)
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = res.model.eval()(x)
            err = float((compiled(x) - ref).abs().max() / ref.abs().max())
            dense_ms, comp_ms = paired_ms(
                lambda m=res.model, x=x: m(x), lambda c=compiled, x=x: c(x), 5 if quick else 20
            )
        acc = evaluate(compiled, val)["accuracy"]
        kinds = {d.action for d in compiled.decisions}
        rows.append(
            (
                name,
                f"{res.flops.reduction:.2f}x",
                compiled.backend,
                ", ".join(sorted(kinds)),
                f"{err:.1e}",
                res.accuracy_finetuned,
                acc,
                dense_ms,
                comp_ms,
                f"{dense_ms / comp_ms:.2f}x",
            )
        )
    rep.table(
        [
            "model",
            "MAC reduction",
            "backend",
            "layers",
            "max rel. error",
            "acc. masked",
            "acc. compiled",
            "dense ms",
            "compiled ms",
            "speedup",
        ],
        rows,
    )
    # One full-size C3D layer (conv3b: 256 -> 256 channels at 8x28x28), KGS at several rates: the
    # demo model itself is too small for kernel timings to mean much.
    cin, size, reductions = (256, (8, 28, 28), (2, 3, 4)) if not quick else (32, (4, 8, 8), (4,))
    torch.manual_seed(s.seed)
    conv = nn.Sequential(nn.Conv3d(cin, cin, 3, padding=1)).eval()
    x = torch.randn(1, cin, *size)
    points = []
    for red in reductions:
        sparse = nn.Sequential(nn.Conv3d(cin, cin, 3, padding=1)).eval()
        sparse.load_state_dict(conv.state_dict())
        mask = get_scheme("kgs").mask(sparse[0].weight, 1 - 1 / red)
        with torch.no_grad():
            sparse[0].weight *= mask
        comp = compile_model(sparse, "auto", input_shape=tuple(x.shape), max_density=1.0)
        with torch.no_grad():  # dense and compiled timed alternately: the ratio survives drift
            dense_ms, ms = paired_ms(lambda: conv(x), lambda c=comp: c(x), 5)
        points.append((mask.numel() / mask.sum().item(), dense_ms / ms))
    plots.speedup_vs_flops(
        {f"C3D conv3b shape ({cin}->{cin}, {'x'.join(map(str, size))}), KGS": points},
        out / "speedup_vs_flops.png",
        f"generated kernels vs dense PyTorch, batch 1, {threads} threads",
    )
    rep.figure("speedup_vs_flops.png", "Speedup of the generated kernel against MAC reduction.")


def attack_section(
    s: DemoSettings, out: Path, rep: Report, model: torch.nn.Module, quick: bool
) -> None:
    """White-box and black-box attacks on the demo's digits CNN."""
    from .attacks import FGSM, PGD
    from .attacks.zo import ZOSignSGD
    from .data import digits

    rep.heading("Adversarial attacks on the digits CNN")
    model.eval()
    x, y = digits(False).tensors
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    n = 20 if quick else 100
    x, y = x[ok][:n], y[ok][:n]
    eps = 0.1
    attacks = {
        "FGSM (L-inf)": FGSM(eps=eps),
        "PGD-20 (L-inf, random start)": PGD(eps=eps, steps=20),
        "PGD-20 (L2, eps 0.5)": PGD(eps=0.5, steps=20, norm="l2"),
        "ZO-signSGD (black box, q=20)": ZOSignSGD(
            eps=eps, lr=0.01, q=20, max_queries=200 if quick else 2000
        ),
    }
    rows, grid = [], None
    for name, attack in attacks.items():
        res = attack.run(model, x, y)
        rows.append(
            (
                name,
                f"{100 * res.success_rate:.1f}%",
                res.mean_distortion("linf"),
                res.mean_distortion("l2"),
                float(res.queries.float().mean()),
            )
        )
        if name.startswith("PGD-20 (L-inf"):
            grid = res.adversarial
    rep.paragraph(
        f"{len(x)} held-out digits the model classifies correctly, untargeted, "
        f"L-inf eps {eps} unless stated (pixels in [0, 1])."
    )
    rep.table(
        ["attack", "success", "mean L-inf (successful)", "mean L2 (successful)", "mean queries"],
        rows,
    )
    plots.attack_grid(x, grid, out / "attack_grid.png")
    rep.figure("attack_grid.png", "PGD-20: clean digits, adversarial digits, perturbations.")


def explain_section(s: DemoSettings, out: Path, rep: Report, model: torch.nn.Module) -> None:
    """Promotion/suppression, CAM overlap and dissection for the demo's attacks."""
    from .attacks import CW, EAD, FGSM, PGD
    from .data import SyntheticConcepts, digits
    from .explain import HEADERS as EXPLAIN_HEADERS
    from .explain import explain_attacks

    rep.heading("Explaining the attacks: promotion and suppression")
    attacks = {
        "FGSM": FGSM(eps=0.1),
        "PGD-20": PGD(eps=0.1, steps=20),
        "C&W L2": CW(binary_steps=4),
        "EAD": EAD(binary_steps=4),
    }
    x, y = digits(False).tensors
    x, y = x[: s.explain_samples], y[: s.explain_samples]
    log.info("explaining %d attacks on %d digits", len(attacks), len(x))
    study = explain_attacks(
        model.eval(), x, y, attacks, out_dir=out / "explain_digits", progress=False
    )
    rep.paragraph(
        "For each successful perturbation x -> x_adv (true class y, adversarial class t), the logit "
        "margin gain splits exactly into promotion of t (delta z_t) and suppression of y "
        "(-delta z_y); through the GAP + linear head each term splits exactly over the 128 units of "
        "the last conv layer.  A perturbation is suppression-dominated when suppression is at least "
        "twice promotion (share >= 2/3), promotion-dominated when at most half of it (share <= 1/3).  "
        "Pixel maps: integrated gradients from x to x_adv; overlaps are with Grad-CAM (top 10% "
        "of pixels; a random map scores about 0.10).  Failed attacks are excluded and counted."
    )
    rep.table(list(EXPLAIN_HEADERS), study.rows())
    for caption, path in list(study.figures.items())[:3]:
        rep.figure(f"explain_digits/{path.name}", caption)

    log.info("training a CNN on %d synthetic concept images for dissection", s.concept_images)
    seed_everything(s.seed)
    train = SyntheticConcepts(s.concept_images, seed=2 * s.seed)
    held = SyntheticConcepts(max(100, s.concept_images // 4), seed=2 * s.seed + 1)
    cnn = build("concept_cnn")
    fit(
        cnn,
        train.classification(),
        None,
        TrainConfig(epochs=s.concept_epochs, lr=3e-3, seed=s.seed, progress=False),
    )
    acc = evaluate(cnn, held.classification())["accuracy"]
    xs, ys = held.images[: s.explain_samples], held.targets[: s.explain_samples]
    study = explain_attacks(
        cnn.eval(),
        xs,
        ys,
        {"FGSM": FGSM(eps=0.03), "PGD-20": PGD(eps=0.03, steps=20)},
        out_dir=out / "explain_concepts",
        concepts=held,
        progress=False,
    )
    d = study.dissection
    rep.paragraph(
        f"A small VGG (concept_cnn) trained to name the shape in {s.concept_images} synthetic "
        f"images (held-out accuracy {100 * acc:.1f}%), attacked at L-inf eps 0.03 and dissected at "
        f"{d.layer} on {len(held)} held-out concept images (4 shapes, 4 colours, 3 textures): "
        f"{int(d.is_detector.sum())} of {len(d.thresholds)} units detect a concept (IoU > 0.04) "
        f"{d.detector_counts()}.  Last column: Spearman correlation between a unit's attack "
        "sensitivity and its best IoU."
    )
    rep.table(list(EXPLAIN_HEADERS), study.rows())
    for caption, path in study.figures.items():
        if "dissection" in path.name or "sensitivity" in path.name or "maps_pgd" in path.name:
            rep.figure(f"explain_concepts/{path.name}", caption)


def graph_section(s: DemoSettings, out: Path, rep: Report) -> None:
    """Topology attacks on a GCN and min-max robust training (GTA inner maximisation)."""
    from .attacks.graph import get_graph_attack
    from .data.graphs import synthetic_graph
    from .defenses.graph import robust_train
    from .engine.graph import node_accuracy
    from .models.graph import gcn

    rep.heading("Graph robustness: topology attacks and robust training")
    data = synthetic_graph(s.graph_nodes, seed=s.seed)
    cfg = TrainConfig(epochs=s.graph_epochs, lr=0.01, weight_decay=5e-4, scheduler="none")
    curves, times = {}, {}
    for label, inner in (("natural GCN", None), ("GTA-robust GCN", "gta")):
        seed_everything(s.seed)
        model = gcn(data.num_features, int(data.y.max()) + 1, hidden=16)
        attack = get_graph_attack("gta", budget=0.05, rounds=1) if inner else None
        log.info("graph: training the %s", label)
        hist = robust_train(model, data, attack, cfg, log_every=10**6)
        times[label] = sum(e["seconds"] for e in hist.epochs) / len(hist.epochs)
        model.eval()
        curves[label] = {0.0: node_accuracy(model, data)}
        for budget in s.graph_budgets:
            res = get_graph_attack("gta", budget=budget, rounds=10, seed=s.seed)(model, data)
            curves[label][budget] = node_accuracy(model, res.data)
    rep.paragraph(
        f"A 2-layer GCN on a synthetic graph ({data.num_nodes} nodes, "
        f"{data.edge_index.shape[1] // 2} edges, 5 communities, noisy features), trained "
        f"{s.graph_epochs} epochs naturally and with min-max training whose inner maximisation is "
        f"GTA at 5% of the edges ({times['GTA-robust GCN']:.2f} s per epoch against "
        f"{times['natural GCN']:.3f} s), then attacked by GTA (evasion, test nodes) at each budget."
    )
    budgets = [0.0, *s.graph_budgets]
    rep.table(
        ["model", *[f"{100 * b:g}%" for b in budgets]],
        [(k, *[f"{100 * v[b]:.1f}%" for b in budgets]) for k, v in curves.items()],
    )
    plots.accuracy_vs_budget(
        curves, out / "graph_accuracy_vs_budget.png", "GTA attack on natural and robust GCNs"
    )
    rep.figure("graph_accuracy_vs_budget.png", "Test accuracy under GTA against the budget.")


def tshirt_section(s: DemoSettings, out: Path, rep: Report) -> None:
    """A short adversarial T-shirt run against CenterNet (COCO-trained, on whole photos: every
    person wears the patch), evaluated on held-out photos against CenterNet and OpenCV's HOG; the
    HOG port on person crops when the CenterNet weights were not fetched."""
    from .attacks.patch import AdversarialTShirt, TShirtConfig, detected
    from .attacks.patch.placement import PATCH_SIZES
    from .attacks.patch.study import (
        detection_examples,
        detector_checks,
        evaluate_patches,
        load_crops,
        load_scenes,
        only_detected,
        training_view,
    )
    from .attacks.patch.transforms import EOT
    from .models.detectors import HOGPersonDetector, get_detector
    from .models.detectors import weights as detector_weights

    rep.heading("Adversarial T-shirt: hiding people from a person detector")
    root = Path(s.persons_root) if s.persons_root else data_root() / "persons"
    if not (root / "manifest.csv").is_file():
        rep.paragraph(f"Skipped: the person photographs ({root}) are not on this machine.")
        return
    size = PATCH_SIZES["torso"]  # a print over the whole torso region
    noise = torch.rand(3, *size, generator=torch.Generator().manual_seed(s.seed + 1))
    if detector_weights.available():
        det, name, iou = get_detector("centernet"), "CenterNet", 0.5
        split = load_scenes(root, None, 0.3, s.seed, limit=s.tshirt_photos, shape="torso")
        train = only_detected(lambda im, bx: detected(det, im, bx, iou), split.train)
        what = (
            f"{len(train)} training photos ({train.persons} wearers; every person in a photo "
            f"wears the patch), evaluated on {len(split.test)} held-out photos "
            f"({split.test.persons} wearers)"
        )
        cfg = TShirtConfig(
            steps=s.tshirt_steps,
            seed=s.seed,
            size=size,
            batch=4,
            samples=1,
            topk=1,
            iou=iou,
            tv=1.0,
        )
        checks = detector_checks(["opencv"], iou=iou) | {
            name: lambda im, bx: detected(det, im, bx, iou)
        }
    else:
        rep.paragraph(
            "The CenterNet weights are not fetched (`make models`): the HOG port on "
            "person crops instead."
        )
        det, name, iou = HOGPersonDetector(), "HOG port", 0.3
        split = load_crops(
            root, ["pennfudan", "inria"], 0.3, s.seed, limit=s.tshirt_photos, shape="torso"
        )
        train = only_detected(lambda im, bx: detected(training_view(det), im, bx), split.train)
        what = f"{len(train)} persons of {split.photos[0]} training photos"
        cfg = TShirtConfig(steps=s.tshirt_steps, seed=s.seed, size=size)
        checks = detector_checks(["opencv"]) | {name: lambda im, bx: detected(det, im, bx)}
    log.info("t-shirt: %d steps against %s", s.tshirt_steps, name)
    patch = (
        AdversarialTShirt(training_view(det), cfg)
        .train(train, log_every=max(1, s.tshirt_steps // 4))
        .patch
    )
    asr = evaluate_patches(
        {"T-shirt patch": patch, "random noise": noise}, checks, split.test, EOT(), samples=2
    )
    plots.save_patch(patch, out / "tshirt_patch.png", print_side=256)
    rep.paragraph(
        f"A patch trained for {s.tshirt_steps} steps against {name} (TPS cloth deformation + EOT) "
        f"on {what}, under new random deformations.  ASR: share of the persons detected without a "
        f"patch that are no longer detected (IoU >= {iou}).  A short run: docs/benchmarks.md has "
        "the full one."
    )
    rep.table(
        ["patch", "detector", "persons detected", "samples", "ASR %"],
        [[p, d, a.clean_detected, a.attacked, round(100 * a.rate, 1)] for (p, d), a in asr.items()],
    )
    rep.figure("tshirt_patch.png", "the T-shirt patch")
    path = detection_examples(
        det, split.test, patch, EOT(), out / "tshirt_detections.png", n=4, iou=iou
    )
    rep.figure(path.name, f"held-out photos without / with the patch ({name}; red: someone hidden)")


def materialise(ds: Dataset) -> TensorDataset:
    """Render a generated dataset once into memory so that epochs do not re-render clips."""
    xs, ys = zip(*(ds[i] for i in range(len(ds))), strict=True)
    return TensorDataset(torch.stack(xs), torch.tensor(ys))


def run_demo(
    out_dir: str | Path = "runs/demo", quick: bool = False, settings: DemoSettings | None = None
) -> Path:
    """Run the demo and return the path of ``report.html`` in ``out_dir``."""
    quick = quick or settings is QUICK
    s = settings or (QUICK if quick else DemoSettings())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    seed_everything(s.seed)
    log.info("rendering %d + %d synthetic clips", s.train_clips, s.val_clips)
    gen_train = SyntheticMovingShapes(s.train_clips, seed=2 * s.seed, frames=s.frames, size=s.size)
    train = materialise(gen_train)
    val = materialise(
        SyntheticMovingShapes(s.val_clips, seed=2 * s.seed + 1, frames=s.frames, size=s.size)
    )
    shape = (1, 3, s.frames, s.size, s.size)

    model = build(
        "c3d",
        num_classes=len(gen_train.classes),
        width=s.width,
        clip_size=[s.frames, s.size, s.size],
        dropout=0.2,
        batch_norm=True,
    )
    log.info("training a C3D (width %.3g) for %d epochs", s.width, s.epochs)
    cfg = TrainConfig(
        epochs=s.epochs, lr=s.lr, batch_size=32, seed=s.seed, warmup_epochs=s.warmup_epochs
    )
    history = fit(model, train, val, cfg, checkpoint_dir=out / "dense")
    dense_acc = evaluate(model, val)["accuracy"]
    save_pruned(
        model, out / "dense.safetensors", extra={"input_shape": list(shape), "accuracy": dense_acc}
    )

    outcomes = {}
    ft = TrainConfig(epochs=s.finetune_epochs, lr=s.finetune_lr, batch_size=32, seed=s.seed)
    for scheme in ("kgs", "filter"):
        log.info(
            "pruning with %s to %.1fx fewer MACs, then %d fine-tuning epochs",
            scheme,
            s.flops_reduction,
            s.finetune_epochs,
        )
        res = run_pruning(
            model,
            get_pruner("magnitude", scheme),
            train,
            val,
            shape,
            flops_reduction=s.flops_reduction,
            finetune=ft,
            workdir=out / scheme,
        )
        save_pruned(
            res.model,
            out / f"{scheme}.safetensors",
            res.scheme,
            res.rates,
            extra={"input_shape": list(shape), "accuracy": res.accuracy_finetuned},
        )
        outcomes[scheme] = res

    # ---- report
    rep = Report("edgeguard demo")
    dense_flops = count_flops(model, shape)
    rep.paragraph(
        f"A C3D (width {s.width}, {dense_flops.dense_macs / 1e6:.1f} MMACs per {s.frames}x{s.size}x{s.size} "
        f"clip, BatchNorm) trained on {s.train_clips} synthetic moving-shape clips "
        f"({len(gen_train.classes)} classes: shape x direction) and pruned one-shot by magnitude to "
        f"{s.flops_reduction}x fewer MACs with two structures, then fine-tuned for {s.finetune_epochs} "
        f"epochs. Total run time {time.perf_counter() - t_start:.0f} s."
    )
    rep.heading("Structured pruning: KGS vs filter pruning at the same FLOPs")
    rows = [("dense", "-", dense_flops.dense_macs, 1.0, dense_acc, "-", dense_acc)]
    for name, res in outcomes.items():
        rows.append(
            (
                name,
                f"{res.flops.reduction:.2f}x",
                res.flops.kept_macs,
                1 - res.flops.kept_macs / res.flops.dense_macs,
                res.accuracy_dense,
                res.accuracy_pruned,
                res.accuracy_finetuned,
            )
        )
    rep.table(
        [
            "model",
            "FLOPs reduction",
            "kept MACs",
            "MACs removed",
            "acc. before",
            "acc. pruned",
            "acc. fine-tuned",
        ],
        rows,
    )
    plots.training_curves(
        {"dense": history.epochs, **{f"{k} fine-tune": v.history for k, v in outcomes.items()}},
        out / "training.png",
    )
    rep.figure("training.png", "Training and validation accuracy per epoch.")
    plots.accuracy_vs_flops(
        {
            "dense": (1.0, dense_acc),
            **{k: (v.flops.reduction, v.accuracy_finetuned) for k, v in outcomes.items()},
        },
        out / "accuracy_vs_flops.png",
    )
    rep.figure("accuracy_vs_flops.png", "Accuracy after fine-tuning against the FLOPs reduction.")
    layers = [layer.name for layer in dense_flops.layers]
    plots.layer_density(
        layers,
        {k: [v.flops[n].density for n in layers] for k, v in outcomes.items()},
        out / "layer_density.png",
    )
    rep.figure(
        "layer_density.png",
        "Share of weights kept per layer (one uniform rate per prunable layer).",
    )
    kgs = outcomes["kgs"].model
    plots.mask_image(
        mask_of(kgs.conv3a),
        "KGS mask of conv3a as W[F, C*k] (8x4 kernel groups)",
        out / "kgs_mask_conv3a.png",
    )
    rep.figure(
        "kgs_mask_conv3a.png", "KGS keeps the same kernel locations in every kernel of a group."
    )
    for name, res in outcomes.items():
        rep.heading(f"Per-layer table: {name}", level=3)
        rep.table(HEADERS, layer_table(res.model, shape, dict.fromkeys(res.rates, name)))
    compile_section(s, out, rep, outcomes, val, shape, quick)
    digits_model = compare_methods(s, out, rep)
    attack_section(s, out, rep, digits_model, quick)
    from .explain.analysis import NothingToExplain

    try:
        explain_section(s, out, rep, digits_model)
    except NothingToExplain as err:  # quick runs train too briefly for every attack to succeed
        rep.paragraph(f"Explanation section skipped: {err}")
    graph_section(s, out, rep)
    tshirt_section(s, out, rep)
    path = rep.save(out / "report.html")
    log.info("demo finished in %.0f s", time.perf_counter() - t_start)
    return path
