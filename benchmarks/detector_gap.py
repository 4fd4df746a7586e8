"""Where a pruned, distilled detector loses person AP50 against its dense teacher.

Reads a graph that ``prune_detectors.py`` wrote (``WORKDIR/.../finetune/last.pt`` or
``pruned.safetensors``, masks applied) and reports, on the held-out photos (split 0.3 by source,
seed 0, the T-shirt protocol) and on the training photos:

- AP50 of the teacher, of the student, and of the two crossed: the student's scores with the
  teacher's boxes, the teacher's scores with the student's boxes (which half costs the AP);
- recall and detection count at score thresholds (0.01 to 0.5);
- per annotated person the teacher finds (a cell scoring >= 0.1 whose teacher box has IoU >= 0.5):
  the student's score at the teacher's best such cell over the teacher's (median), and the
  persons the student misses (no cell of its own with IoU >= 0.5 scoring >= 0.05); also by the
  person's height as a fraction of the photo's (under 1/4, 1/4 to 1/2, over 1/2).

Example: ``.venv/bin/python benchmarks/detector_gap.py --detector centernet --keep-classes 0
--graph runs/prune_detectors/centernet/kgs-magnitude-2x/finetune/last.pt``
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from torch import nn

from edgeguard.data.persons import PersonPhotos, load_persons
from edgeguard.modelfile import load_model
from edgeguard.models.detectors import get_detector
from edgeguard.models.detectors.base import box_iou
from edgeguard.models.detectors.train import matched_detections
from edgeguard.prune import detector_ap, with_net
from edgeguard.prune.distill import load_start
from edgeguard.settings import data_root
from prune_detectors import add_keep_classes, start_state

# how many leading graph outputs are scores (the rest are boxes)
SCORE_OUTPUTS = {"centernet": 1, "nanodet": 3}


class Crossed(nn.Module):
    """The score outputs of ``scores`` with the box outputs of ``boxes`` (same graph shapes)."""

    def __init__(self, scores: nn.Module, boxes: nn.Module, n_scores: int) -> None:
        super().__init__()
        self.scores, self.boxes, self.n = scores, boxes, n_scores

    def forward(self, *x):
        return (*self.scores(*x)[: self.n], *self.boxes(*x)[self.n :])


def load_graph(path: Path, net: nn.Module) -> None:
    """Load a fine-tuning checkpoint's (masks applied) or a hard-pruned model file's state (masks
    attached, the file's digests checked) into ``net``."""
    if path.suffix == ".pt":
        load_start(net, start_state(str(path)))
    else:
        load_model(path, model=net)


def recall_table(det, photos: PersonPhotos, thresholds) -> list[dict]:
    s, m, positives = matched_detections(det, photos, side=None, min_score=min(thresholds))
    m = m.bool()
    return [
        {
            "score": t,
            "detections": int((s >= t).sum()),
            "recall": round(float(m[s >= t].sum()) / max(positives, 1), 3),
        }
        for t in thresholds
    ]


# person height as a fraction of the photo's (the graph sees every photo stretched to one size)
SIZE_BINS = ((0.0, 0.25), (0.25, 0.5), (0.5, 1.01))


def per_person(teacher, student, photos: PersonPhotos, found: float = 0.1, miss: float = 0.05):
    rows = []  # (height fraction, teacher finds, student's score / teacher's, student misses)
    with torch.no_grad():
        for p in photos:
            img = p.float_image()[None]
            t, s = teacher.candidates(img)[0], student.candidates(img)[0]
            for gt in p.boxes:
                height = float(gt[3] - gt[1]) / img.shape[2]
                fits_t = box_iou(t.boxes, gt[None])[:, 0] >= 0.5
                best = torch.where(fits_t, t.scores, torch.zeros_like(t.scores))
                if float(best.max()) < found:
                    rows.append((height, False, 0.0, False))
                    continue
                cell = int(best.argmax())
                fits_s = box_iou(s.boxes, gt[None])[:, 0] >= 0.5
                own = float(torch.where(fits_s, s.scores, torch.zeros_like(s.scores)).max())
                rows.append((height, True, float(s.scores[cell]) / float(best[cell]), own < miss))

    def summary(sel):
        found_rows = [r for r in sel if r[1]]
        ratios = torch.tensor([r[2] for r in found_rows])
        return {
            "persons": len(sel),
            "teacher_finds": len(found_rows),
            "student_misses": sum(r[3] for r in found_rows),
            "median_score_ratio_at_teacher_cell": (
                round(float(ratios.median()), 3) if len(found_rows) else None
            ),
        }

    out = summary(rows)
    out["by_height"] = {
        f"{lo:g}-{min(hi, 1):g}": summary([r for r in rows if lo <= r[0] < hi])
        for lo, hi in SIZE_BINS
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detector", choices=sorted(SCORE_OUTPUTS), default="centernet")
    ap.add_argument("--graph", required=True, help="finetune/last.pt or pruned.safetensors")
    add_keep_classes(ap)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON of the figures")
    args = ap.parse_args()

    photos = load_persons(data_root() / "persons")
    train, held_out = photos.split(0.3, args.seed)
    teacher = get_detector(args.detector)
    if args.keep_classes is not None:
        teacher = teacher.keep_classes(args.keep_classes)
    net = copy.deepcopy(teacher.net)
    load_graph(Path(args.graph), net)
    net.eval()
    student = with_net(teacher, net)
    n = SCORE_OUTPUTS[args.detector]
    result = {
        "graph": args.graph,
        "ap50": {
            "teacher": round(detector_ap(teacher, held_out), 4),
            "student": round(detector_ap(teacher, held_out, net), 4),
            "student scores, teacher boxes": round(
                detector_ap(teacher, held_out, Crossed(net, teacher.net, n)), 4
            ),
            "teacher scores, student boxes": round(
                detector_ap(teacher, held_out, Crossed(teacher.net, net, n)), 4
            ),
        },
    }
    thresholds = [0.01, 0.05, 0.1, 0.2, 0.3, 0.5]
    for name, dset in (("held_out", held_out), ("train", train)):
        result[name] = {
            "recall": {
                "teacher": recall_table(teacher, dset, thresholds),
                "student": recall_table(student, dset, thresholds),
            },
            "persons": per_person(teacher, student, dset),
        }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
