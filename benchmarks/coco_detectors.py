"""Person detection quality of the COCO detectors ported from TF.js (CenterNet, NanoDet) on every
photo of ../shared/data/persons: AP50 (VOC all-point, every annotated person a positive), and at each
detector's operating threshold the recall and the false positives per photo; the latency of one photo
(batch 1, the detector's own input size).

    .venv/bin/python benchmarks/coco_detectors.py
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch

from edgeguard.data.persons import load_persons
from edgeguard.models.detectors import get_detector
from edgeguard.models.detectors.train import average_precision, match_detections
from edgeguard.settings import data_root


def evaluate(det, photos, min_score: float = 0.01) -> dict:
    saved, det.threshold = det.threshold, min_score
    scores, matched, positives, per_photo = [], [], 0, []
    times = []
    try:
        with torch.no_grad():
            for photo in photos:
                t0 = time.perf_counter()
                found = det(photo.float_image()[None])[0]
                times.append(time.perf_counter() - t0)
                tp = match_detections(found.boxes, found.scores, photo.boxes, 0.5)
                scores.append(found.scores)
                matched.append(tp)
                positives += len(photo.boxes)
                per_photo.append((found.scores, tp, len(photo.boxes)))
    finally:
        det.threshold = saved
    ap = average_precision(torch.cat(scores), torch.cat(matched), positives)
    tps = sum(int(tp[s >= saved].sum()) for s, tp, _ in per_photo)
    fps = sum(int((~tp[s >= saved]).sum()) for s, tp, _ in per_photo)
    return {
        "AP50": round(ap, 4),
        "threshold": saved,
        "recall": round(tps / positives, 4),
        "false positives per photo": round(fps / len(photos), 3),
        "photos": len(photos),
        "persons": positives,
        "ms per photo (median)": round(1000 * sorted(times)[len(times) // 2], 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench/coco_detectors.json")
    args = ap.parse_args()
    photos = load_persons(data_root() / "persons")
    rows = {name: evaluate(get_detector(name), photos) for name in ("centernet", "nanodet")}
    record = {
        "date": str(date.today()),
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1))
    print("| detector | AP50 | threshold | recall | false positives / photo | ms / photo |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['AP50']:.4f} | {r['threshold']} | {r['recall']:.3f} | "
            f"{r['false positives per photo']:.2f} | {r['ms per photo (median)']} |"
        )


if __name__ == "__main__":
    main()
