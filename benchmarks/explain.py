"""Explaining adversarial examples (issue 6): per attack, the share of suppression-dominated, balanced
and promotion-dominated perturbations, the top-10% overlap of the pixel-level suppression (promotion)
map with Grad-CAM of the true (adversarial) class against random maps, the completeness of the
layer-wise split, and on the concept CNN the Spearman correlation between units' attack sensitivity
and their interpretability (network dissection).  Mean and spread over seeds (model and data).

    .venv/bin/python benchmarks/explain.py --seeds 0 1 2 --num 200
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from edgeguard.attacks import CW, EAD, FGSM, PGD
from edgeguard.data import SyntheticConcepts, digits
from edgeguard.engine import TrainConfig, evaluate, fit, seed_everything
from edgeguard.explain import explain_attacks, unit_pse
from edgeguard.models import build

SETUPS = {
    # name: (model, eps of the L-inf attacks, early layer for the conductance completeness check)
    "digits_cnn": ("digits_cnn", 0.1, "features.1"),
    "concept_cnn": ("concept_cnn", 0.03, "features.2"),
}


def data(task: str, seed: int, n_concepts: int):
    if task == "digits_cnn":
        train, test = digits(True, seed=seed), digits(False, seed=seed)
        return train, test, None
    train = SyntheticConcepts(n_concepts, seed=2 * seed)
    held = SyntheticConcepts(n_concepts // 3, seed=2 * seed + 1)
    return train.classification(), held.classification(), held


def run(task: str, seed: int, args) -> dict:
    arch, eps, early = SETUPS[task]
    seed_everything(seed)
    train, test, concepts = data(task, seed, args.concept_images)
    model = build(arch, **({"num_classes": 4} if task == "concept_cnn" else {}))
    fit(
        model,
        train,
        None,
        TrainConfig(epochs=12 if task == "digits_cnn" else 10, lr=3e-3, seed=seed, progress=False),
    )
    acc = evaluate(model, test)["accuracy"]
    model.eval()
    x, y = (t[: args.num] for t in test.tensors)
    attacks = {
        "FGSM": FGSM(eps=eps),
        "PGD-20": PGD(eps=eps, steps=20),
        "C&W L2": CW(),
        "EAD": EAD(),
    }
    t0 = time.perf_counter()
    study = explain_attacks(
        model,
        x,
        y,
        attacks,
        out_dir=Path(args.out) / f"{task}_s{seed}",
        concepts=concepts,
        progress=False,
    )
    res = {
        "task": task,
        "seed": seed,
        "accuracy": acc,
        "seconds": time.perf_counter() - t0,
        "attacks": {},
    }
    for e in study.explanations:
        shares = e.category_shares()
        # conductance at an early layer: how far from complete is the split there?
        pse = unit_pse(model, e.inputs, e.adversarial, e.labels, e.adv_class, layer=early)
        r = {
            "attempted": e.attempted,
            "failed": e.failed,
            **shares,
            "overlap_supp_cam_true": float(e.overlap_suppression.mean()),
            "overlap_prom_cam_adv": float(e.overlap_promotion.mean()),
            "random_overlap": float(e.random_suppression.mean()),
            "exact_completeness_max": float(e.unit.completeness_error().max()),
            "conductance_completeness_max": float(pse.completeness_error().max()),
        }
        if e.attack in study.correlations:
            c = study.correlations[e.attack]
            r.update(
                rho=c.rho,
                p=c.p_value,
                detector_sens=c.detector_sensitivity,
                other_sens=c.other_sensitivity,
            )
        res["attacks"][e.attack] = r
    if study.dissection is not None:
        res["detectors"] = int(study.dissection.is_detector.sum())
        res["detector_counts"] = study.dissection.detector_counts()
        res["units"] = len(study.dissection.thresholds)
    print(
        f"{task} seed {seed}: accuracy {acc:.3f}, explained in {res['seconds']:.0f} s", flush=True
    )
    return res


def ms(values) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def pct(values) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.0f} ± {100 * sd:.0f}%"


def table(results: list[dict]) -> str:
    lines = [
        "| model | attack | failed / attacked | suppression-dom. | balanced | promotion-dom. | "
        "overlap supp./CAM true | overlap prom./CAM adv | random | sens.-IoU rho (p) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task in SETUPS:
        rs = [r for r in results if r["task"] == task]
        if not rs:
            continue
        for att in rs[0]["attacks"]:
            a = [r["attacks"][att] for r in rs if att in r["attacks"]]
            rho = "-"
            if "rho" in a[0]:
                rho = f"{ms([v['rho'] for v in a])} (max p {max(v['p'] for v in a):.1g})"
            lines.append(
                f"| {task} | {att} | {sum(v['failed'] for v in a)} / {sum(v['attempted'] for v in a)} "
                f"| {pct([v['suppression-dominated'] for v in a])} | {pct([v['balanced'] for v in a])} "
                f"| {pct([v['promotion-dominated'] for v in a])} "
                f"| {ms([v['overlap_supp_cam_true'] for v in a])} "
                f"| {ms([v['overlap_prom_cam_adv'] for v in a])} "
                f"| {ms([v['random_overlap'] for v in a])} | {rho} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--num", type=int, default=200, help="held-out inputs attacked per seed")
    ap.add_argument("--concept-images", type=int, default=3000, help="concept CNN training images")
    ap.add_argument("--tasks", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    ap.add_argument("--out", default="runs/bench/explain")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    results = [run(task, seed, args) for task in args.tasks for seed in args.seeds]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "explain.json").write_text(json.dumps(results, indent=1))
    print(table(results))
    for r in results:
        extra = r["attacks"][next(iter(r["attacks"]))]
        print(
            f"{r['task']} seed {r['seed']}: exact split max error "
            f"{max(a['exact_completeness_max'] for a in r['attacks'].values()):.1e}, conductance "
            f"max error {max(a['conductance_completeness_max'] for a in r['attacks'].values()):.2%}"
            + (
                f", detectors {r['detectors']}/{r['units']} {r['detector_counts']}"
                if "detectors" in r
                else ""
            )
            + (
                f", detector sens {extra['detector_sens']:.3f} vs others {extra['other_sens']:.3f}"
                if "detector_sens" in extra
                else ""
            )
        )


if __name__ == "__main__":
    main()
