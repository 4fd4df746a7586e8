"""Whole photos as attack scenes: every usable person in a photo wears the patch at once.

CNN detectors (CenterNet, NanoDet) see whole photos, which they stretch to their own input size.
A scene is a photo stretched to a fixed canvas (``size``, default 416 x 416), so scenes batch
together. A detector then sees the same thing it would see from the original photo. Each person
whose box is at least ``min_height`` canvas pixels tall and not wider than tall gets the patch on
the torso, scaled to the wearer (:func:`~.placement.torso_patch`). Smaller or wider persons stay in
the photo unpatched and are counted as skipped. A photo without a usable person is skipped and
counted.

:meth:`PersonScenes.dress` prints the patch on every wearer with :func:`~.placement.apply_patch`,
one independent EOT/TPS draw per person, so each wearer's shirt folds its own way.  It returns,
for every image, the boxes of its wearers.  :class:`~.placement.PersonCrops` has the same method
(one wearer per crop), so the T-shirt trainers and the ASR tooling take either.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...data.persons import PersonPhotos
from .placement import PersonCrops, PlacementError, apply_patch, torso_patch
from .transforms import EOT, ColorTransform


@dataclass
class PersonScenes:
    """``images [N, 3, H, W]`` photos stretched to the canvas, in [0, 1]; ``boxes`` and
    ``patch_boxes``: per photo ``[k, 4]`` wearer boxes and their patch rectangles (canvas pixels);
    ``names``: photo names."""

    images: torch.Tensor
    boxes: list[torch.Tensor]
    patch_boxes: list[torch.Tensor]
    names: list[str]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def persons(self) -> int:
        return sum(len(b) for b in self.boxes)

    def subset(self, index) -> PersonScenes:
        idx = torch.as_tensor(index, dtype=torch.long).reshape(-1).tolist()
        return PersonScenes(
            self.images[idx],
            [self.boxes[i] for i in idx],
            [self.patch_boxes[i] for i in idx],
            [self.names[i] for i in idx],
        )

    def dress(
        self,
        patch: torch.Tensor,
        eot: EOT | None = None,
        color: ColorTransform | None = None,
        samples: int = 1,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(``[N * samples, 3, H, W]`` scenes with the patch on every wearer, scene-major; the wearer
        boxes ``[k, 4]`` of each image)."""
        images = self.images.repeat_interleave(samples, 0)
        boxes = [b for b in self.boxes for _ in range(samples)]
        pboxes = [b for b in self.patch_boxes for _ in range(samples)]
        for k in range(max((len(b) for b in boxes), default=0)):
            rows = [i for i, b in enumerate(boxes) if len(b) > k]
            view = PersonCrops(
                images[rows],
                torch.stack([boxes[i][k] for i in rows]),
                torch.stack([pboxes[i][k] for i in rows]),
                [""] * len(rows),
            )
            dressed = apply_patch(view, patch, eot, color, 1, generator)
            images = images.index_copy(0, torch.tensor(rows), dressed)
        return images, boxes


def person_scenes(
    photos: PersonPhotos,
    size: tuple[int, int] = (416, 416),
    scale: float = 1.0,
    shape: str = "torso",
    min_height: float = 48.0,
    max_aspect: float = 1.0,
) -> tuple[PersonScenes, dict[str, int]]:
    """Scenes of ``photos`` and counts of what was skipped (``small`` / ``wide`` persons, photos
    with ``no wearer``)."""
    torso_patch(torch.tensor([0.0, 0.0, 1.0, 2.0]), scale, shape)  # validate early
    h, w = size
    images, boxes, pboxes, names = [], [], [], []
    skipped = {"small": 0, "wide": 0, "no wearer": 0}
    for photo in photos:
        img = photo.float_image()[None]
        ph, pw = img.shape[2:]
        sx, sy = w / pw, h / ph
        canvas = F.interpolate(
            img, size=size, mode="bilinear", align_corners=False, antialias=True
        )[0].clamp(0, 1)
        keep = []
        for box in photo.boxes * torch.tensor([sx, sy, sx, sy]):
            bw, bh = float(box[2] - box[0]), float(box[3] - box[1])
            if bh < min_height:
                skipped["small"] += 1
            elif bw > max_aspect * bh:
                skipped["wide"] += 1
            else:
                keep.append(box)
        if not keep:
            skipped["no wearer"] += 1
            continue
        b = torch.stack(keep)
        images.append(canvas)
        boxes.append(b)
        pboxes.append(torch.stack([torso_patch(x, scale, shape) for x in b]))
        names.append(photo.name)
    if not images:
        raise PlacementError(
            f"no photo with a usable person among {len(photos)} (skipped: {skipped})"
        )
    return PersonScenes(torch.stack(images), boxes, pboxes, names), skipped
