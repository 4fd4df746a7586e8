"""AP50 against MAC reduction of the COCO detectors pruned by edgeguard (issue 27), from the JSON
results of ``benchmarks/prune_detectors.py``: the held-out AP50 each run ends with (the last
distillation epoch: the held-out photos choose nothing), one marker per method, the dense
detector's AP50 at 1x; with ``--curves``, held-out AP50 against distillation steps of the runs
given there (steps = epochs x ceil(photos x copies / batch)).

    .venv/bin/python benchmarks/plot_detector_ap.py docs/results/prune_detectors_*_2026-12-0[45].json \\
        --out docs/img/prune_detectors_ap_vs_macs.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DENSE = {"centernet": 0.730, "nanodet": 0.568}  # held-out AP50 of the dense graphs (same split)


# one distinct marker per method (matplotlib's filled markers)
MARKERS = "osD^vPXhp<>d8H1234+x|_"


def person_suffix(args: dict) -> str:
    """How a run treated the classes: a person detector (class head cut) or person-only
    distillation of the 80-class graph; empty otherwise."""
    if args.get("keep_classes") == [0]:
        return ", person detector (class head cut)"
    if args.get("distill_classes") == [0]:
        return ", person only"
    return ""


def full_reduction(row: dict) -> float:
    """A row's MAC reduction against the 80-class graph (a cut class head counts towards it)."""
    return row.get("reduction_of_full", row.get("reduction", 0.0))


def points(paths: list[Path]) -> dict[str, list[tuple[float, float, str, str]]]:
    """{detector: [(reduction, final AP50, job, file stem)]} over every run in ``paths``."""
    out: dict[str, list[tuple[float, float, str, str]]] = {}
    for path in paths:
        record = json.loads(path.read_text())
        det = record.get("meta", {}).get("args", {}).get("detector")
        det = det or ("nanodet" if "nanodet" in path.stem else "centernet")
        args = record.get("meta", {}).get("args", {})
        suffix = ""
        if args.get("reconstruct", 0):
            suffix = " + reconstruction" + (", OBS units" if args.get("reselect") else "")
        suffix += person_suffix(args)
        if args.get("start"):
            suffix += ", second stage (from a pruned graph)"
        for row in record.get("rows", []):
            if not row or row.get("reduction") is None or "ap_finetuned" not in row:
                continue  # one-shot comparisons: nothing was distilled
            final = row.get("ap_finetuned") or 0.0
            job = row["job"] + suffix
            out.setdefault(det, []).append((full_reduction(row), final, job, path.stem))
    return out


def label(args: dict, row: dict) -> str:
    """A legend entry for one run: detector, MACs, job, the person options."""
    red = full_reduction(row)
    return f"{args.get('detector', '?')} {red:.2f}x {row['job']}{person_suffix(args)}"


def plot_curves(paths: list[Path], out: Path, photos: int = 126) -> None:
    """Held-out AP50 after each evaluated epoch against distillation steps, one line per run."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2))
    for path in paths:
        record = json.loads(path.read_text())
        args = record.get("meta", {}).get("args", {})
        per_epoch = -(-photos * args.get("copies", 1) // args.get("batch", 4))
        for row in record.get("rows", []):
            curve = row.get("ap_curve") or []
            if not curve:
                continue
            steps = [0] + [e * per_epoch for e, _ in curve]
            aps = [row.get("ap_pruned", 0.0)] + [a for _, a in curve]
            ax.plot(steps, aps, marker="o", ms=3, label=label(args, row))
            det = args.get("detector")
            if det in DENSE:
                ax.axhline(DENSE[det], color="gray", lw=0.8, ls="--")
    ax.set_xlabel(f"distillation steps (batch 4, {photos} photos: 32 steps an epoch)")
    ax.set_ylabel("held-out person AP50")
    ax.set_title("Label-free distillation of pruned detectors (dashed: dense)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/img/prune_detectors_ap_vs_macs.png"))
    ap.add_argument(
        "--curves", type=Path, nargs="+", default=[], help="runs whose AP50-vs-steps curves to plot"
    )
    ap.add_argument(
        "--curves-out", type=Path, default=Path("docs/img/distillation_ap_vs_steps.png")
    )
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = points(args.results)
    fig, ax = plt.subplots(figsize=(9.5, 4.2))
    markers = {}
    for det, rows in sorted(pts.items()):
        color = "tab:blue" if det == "centernet" else "tab:orange"
        ax.scatter([1.0], [DENSE[det]], color=color, marker="*", s=120, label=f"{det} dense")
        for red, best, job, _ in rows:
            m = markers.setdefault(job, MARKERS[len(markers) % len(MARKERS)])
            ax.scatter([red], [best], color=color, marker=m, alpha=0.8)
    for job, m in markers.items():
        ax.scatter([], [], color="gray", marker=m, label=job)
    ax.set_xlabel("MAC reduction (x)")
    ax.set_ylabel("held-out person AP50 after distillation")
    ax.set_ylim(-0.02, 0.8)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the points
    ax.set_title("Pruned COCO detectors, label-free distillation")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    for det, rows in sorted(pts.items()):
        for red, best, job, stem in sorted(rows):
            print(f"{det} {red:.2f}x {job}: AP50 {best:.4f} ({stem})")
    print(f"wrote {args.out}")
    if args.curves:
        plot_curves(args.curves, args.curves_out)


if __name__ == "__main__":
    main()
