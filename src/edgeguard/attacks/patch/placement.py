"""Putting a patch on people: person-normalised crops and torso placement.

Every annotated person becomes a crop of fixed size in which the person is ``person_height`` pixels
tall and centred (the scale at which sliding-window person detectors work: OpenCV's HOG expects
about 96 px in a 128 px window), so crops batch together and one detector pass scores them all.
The patch sits on the torso region (the middle 70% of the box width by 40% of its height, from 20% of
the height down), centred on it: either a square of side ``scale`` times the region's smaller side
(``shape="square"``, a chest logo) or the region itself scaled by ``scale`` (``shape="torso"``, a
print over the whole front of the shirt, stretched to each wearer's proportions)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...data.persons import PersonPhotos
from ...errors import EdgeguardError
from .transforms import EOT, ColorTransform, appearance, backward_map

TORSO_WIDTH, TORSO_TOP, TORSO_HEIGHT = 0.7, 0.2, 0.4
# Default patch pixels (h, w) per shape: the torso region is 0.4 x height by 0.7 x width of a box,
# about 1.4 : 1 for a pedestrian.
PATCH_SIZES = {"square": (64, 64), "torso": (80, 56)}
SHAPES = tuple(PATCH_SIZES)


class PlacementError(EdgeguardError, ValueError):
    """A patch that does not fit the torso, or boxes that do not describe a person."""


@dataclass
class PersonCrops:
    """``images [N, 3, H, W]`` float in [0, 1]; ``boxes [N, 4]`` person boxes in crop pixels;
    ``patch_boxes [N, 4]`` (x1, y1, x2, y2) of the nominal patch rectangle (a square or the torso
    region); ``names``: source photo and person index."""

    images: torch.Tensor
    boxes: torch.Tensor
    patch_boxes: torch.Tensor
    names: list[str]

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index) -> PersonCrops:
        idx = torch.as_tensor(index, dtype=torch.long)
        return PersonCrops(
            self.images[idx],
            self.boxes[idx],
            self.patch_boxes[idx],
            [self.names[i] for i in idx.tolist()],
        )

    @property
    def persons(self) -> int:
        return len(self)

    def dress(
        self,
        patch: torch.Tensor,
        eot: EOT | None = None,
        color: ColorTransform | None = None,
        samples: int = 1,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(``[N * samples, 3, H, W]`` crops wearing the patch, crop-major; ``[N * samples, 4]`` the
        wearer's box in each): the interface :class:`~.scenes.PersonScenes` shares."""
        images = apply_patch(self, patch, eot, color, samples, generator)
        return images, self.boxes.repeat_interleave(samples, 0)


def torso_square(box: torch.Tensor, scale: float) -> torch.Tensor:
    """``[4]`` the patch square on the torso of ``box`` (x1, y1, x2, y2)."""
    return torso_patch(box, scale, "square")


def torso_patch(box: torch.Tensor, scale: float, shape: str = "square") -> torch.Tensor:
    """``[4]`` (x1, y1, x2, y2) of the patch on the torso of ``box``: the largest centred square
    (``"square"``) or the whole torso region (``"torso"``), each scaled by ``scale`` in (0, 1]."""
    if shape not in SHAPES:
        raise PlacementError(f"unknown patch shape {shape!r}; accepted: {', '.join(SHAPES)}")
    if not 0 < scale <= 1:
        raise PlacementError(
            f"patch scale must be in (0, 1] of the torso region; {scale} would be larger than "
            "the torso"
        )
    x1, y1, x2, y2 = box.tolist()
    w, h = x2 - x1, y2 - y1
    pw, ph = TORSO_WIDTH * w, TORSO_HEIGHT * h
    if shape == "square":
        pw = ph = min(pw, ph)
    pw, ph = scale * pw, scale * ph
    cx, cy = (x1 + x2) / 2, y1 + (TORSO_TOP + TORSO_HEIGHT / 2) * h
    return torch.tensor([cx - pw / 2, cy - ph / 2, cx + pw / 2, cy + ph / 2])


def person_crops(
    photos: PersonPhotos,
    size: tuple[int, int] = (176, 112),
    person_height: int = 100,
    scale: float = 0.8,
    min_height: float = 40.0,
    max_aspect: float = 1.0,
    shape: str = "square",
) -> tuple[PersonCrops, dict[str, int]]:
    """Crops of every usable person and counts of what was skipped (too small, too wide: sitting
    or partly annotated people, for whom a torso patch is not defined).  ``shape``: see
    :func:`torso_patch`."""
    torso_patch(torch.tensor([0.0, 0.0, 1.0, 2.0]), scale, shape)  # validate early
    hc, wc = size
    images, boxes, squares, names = [], [], [], []
    skipped = {"small": 0, "wide": 0}
    for photo in photos:
        img = photo.float_image()[None]
        _, _, h_img, w_img = img.shape
        for k, box in enumerate(photo.boxes):
            x1, y1, x2, y2 = box.tolist()
            bh, bw = y2 - y1, x2 - x1
            if bh < min_height:
                skipped["small"] += 1
                continue
            if bw > max_aspect * bh:
                skipped["wide"] += 1
                continue
            r = person_height / bh  # crop pixels per photo pixel
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            half_w, half_h = wc / 2 / r, hc / 2 / r
            left, top = round(cx - half_w), round(cy - half_h)
            right, bottom = round(cx + half_w), round(cy + half_h)
            pad = (max(0, -left), max(0, right - w_img), max(0, -top), max(0, bottom - h_img))
            region = F.pad(img, pad, mode="replicate") if any(pad) else img
            region = region[:, :, top + pad[2] : bottom + pad[2], left + pad[0] : right + pad[0]]
            crop = F.interpolate(
                region, size=size, mode="bilinear", align_corners=False, antialias=True
            ).clamp(0, 1)
            sx, sy = wc / (right - left), hc / (bottom - top)
            cbox = torch.tensor(
                [(x1 - left) * sx, (y1 - top) * sy, (x2 - left) * sx, (y2 - top) * sy]
            )
            images.append(crop[0])
            boxes.append(cbox)
            squares.append(torso_patch(cbox, scale, shape))
            names.append(f"{photo.name}#{k}")
    if not images:
        raise PlacementError(f"no usable person in {len(photos)} photos (skipped: {skipped})")
    return PersonCrops(
        torch.stack(images), torch.stack(boxes), torch.stack(squares), names
    ), skipped


def apply_patch(
    crops: PersonCrops,
    patch: torch.Tensor,
    eot: EOT | None = None,
    color: ColorTransform | None = None,
    samples: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``[N * samples, 3, H, W]``: each crop with the patch ``[3, h, w]`` (values in [0, 1]) printed
    on its torso under random transformations (``samples`` draws per crop, crop-major order)."""
    if patch.dim() != 3 or patch.shape[0] != 3:
        raise PlacementError(f"a patch is a [3, h, w] tensor, got {tuple(patch.shape)}")
    eot = eot or EOT.none()
    n = len(crops) * samples
    images = crops.images.repeat_interleave(samples, 0)
    squares = crops.patch_boxes.repeat_interleave(samples, 0)
    p = patch[None]
    if color is not None:
        p = color(p)
    p = appearance(p.expand(n, -1, -1, -1), eot, generator)
    _, _, hc, wc = images.shape
    # The grid for the whole crop: crop pixel -> nominal patch square coordinates -> EOT warp.
    ys = torch.arange(hc) + 0.5
    xs = torch.arange(wc) + 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    cx = (squares[:, 0] + squares[:, 2]) / 2
    cy = (squares[:, 1] + squares[:, 3]) / 2
    half_w = (squares[:, 2] - squares[:, 0]).view(-1, 1, 1) / 2
    half_h = (squares[:, 3] - squares[:, 1]).view(-1, 1, 1) / 2
    # EOT warps in isotropic units (half the patch height), so a rotation stays a rotation on a
    # rectangular print; x is rescaled to the patch's [-1, 1] only when sampling it.
    u = (gx[None] - cx.view(-1, 1, 1)) / half_h
    v = (gy[None] - cy.view(-1, 1, 1)) / half_h
    aspect = half_h / half_w  # [n, 1, 1]
    # Only a box around the patch can be patch (scale, shift and bending are bounded).  In
    # isotropic units the patch's half extents are (1 / aspect, 1); a margin of 1.6 times the
    # larger one on both axes holds it under any rotation, as for a square.
    margin = 1.6 * torch.clamp(1 / aspect, min=1.0)
    inside = (u.abs() < margin) & (v.abs() < margin)
    rows = inside.any(2).any(0).nonzero().squeeze(1)
    cols = inside.any(1).any(0).nonzero().squeeze(1)
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    uv = torch.stack([u[:, r0:r1, c0:c1], v[:, r0:r1, c0:c1]], -1)  # [n, h', w', 2]
    where = backward_map(uv.flatten(1, 2), eot, generator).view_as(uv)
    where = torch.stack([where[..., 0] * aspect, where[..., 1]], -1)
    warped = F.grid_sample(p, where, mode="bilinear", padding_mode="zeros", align_corners=False)
    mask = F.grid_sample(
        torch.ones(n, 1, *p.shape[2:]),
        where,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    region = images[:, :, r0:r1, c0:c1]
    out = images.clone()
    out[:, :, r0:r1, c0:c1] = region * (1 - mask) + warped * mask
    return out
