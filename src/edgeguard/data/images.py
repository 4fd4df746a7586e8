"""Unlabeled photos for label-free training (distillation from a teacher network): a folder of
images, or the photos of a :class:`~.persons.PersonPhotos` split, served at one size with strong
augmentation (random resized crop, horizontal flip, brightness / contrast / saturation jitter).

The random draws come from torch's global generator in the loading process (``num_workers=0``), so
the training engine's checkpoints, which save that generator, resume a run bit-exactly."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .errors import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

log = logging.getLogger(__name__)


def read_rgb(path: str | Path) -> torch.Tensor | None:
    """The image at ``path`` as a uint8 RGB tensor ``[3, H, W]`` (OpenCV decodes it), or None when
    it cannot be read or decoded."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        return None
    return torch.from_numpy(np.ascontiguousarray(img[:, :, ::-1])).permute(2, 0, 1).contiguous()


class UnlabeledImages(Dataset):
    """Items ``(image [3, H, W] float in [0, 1], 0)`` at ``size = (H, W)``.

    Args:
        images: uint8 RGB tensors ``[3, h, w]`` of any sizes.
        size: output ``(H, W)`` in pixels (the network's input size: images are stretched, as the
            COCO detectors stretch a photo).
        augment: draw a crop of ``scale`` of the area (aspect ratio in [3/4, 4/3]), a horizontal
            flip (p = 0.5) and colour factors in ``[1 - jitter, 1 + jitter]``; False: the whole
            photo, resized.
        copies: each photo serves ``copies`` items per epoch (different draws).
        mosaic: with this probability (augmenting only) an item is a 2 x 2 mosaic: the photo
            and three others drawn at random, each augmented and shrunk into one quadrant (small
            objects and new contexts, as detectors train with since YOLOv4).
        zoom_out: with this probability (augmenting only) the whole photo is shrunk by a factor
            in ``[1, max_zoom]`` and placed at random on a canvas of its mean colour (SSD's
            "expand" augmentation): random crops only ever enlarge what a photo shows, and a
            student distilled on them sees few small objects.
    """

    def __init__(
        self,
        images: Sequence[torch.Tensor],
        size: tuple[int, int],
        augment: bool = True,
        scale: tuple[float, float] = (0.35, 1.0),
        jitter: float = 0.3,
        copies: int = 1,
        mosaic: float = 0.0,
        zoom_out: float = 0.0,
        max_zoom: float = 3.0,
    ) -> None:
        if not images:
            raise DatasetError("no images to serve (an empty folder or photo set)")
        for i, img in enumerate(images):
            if img.dtype != torch.uint8 or img.dim() != 3 or img.shape[0] != 3:
                raise DatasetError(
                    f"image {i}: expected a uint8 RGB tensor [3, h, w], got {img.dtype} "
                    f"{tuple(img.shape)}"
                )
        if len(size) != 2 or min(size) < 8:
            raise DatasetError(f"size must be (H, W) of at least 8 pixels, got {size}")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise DatasetError(f"scale must satisfy 0 < low <= high <= 1, got {scale}")
        if not 0 <= jitter < 1:
            raise DatasetError(f"jitter must be in [0, 1), got {jitter}")
        if copies < 1:
            raise DatasetError(f"copies must be >= 1, got {copies}")
        if not 0 <= mosaic <= 1:
            raise DatasetError(f"mosaic must be a probability in [0, 1], got {mosaic}")
        if not 0 <= zoom_out <= 1:
            raise DatasetError(f"zoom_out must be a probability in [0, 1], got {zoom_out}")
        if not (math.isfinite(max_zoom) and max_zoom >= 1):
            raise DatasetError(f"max_zoom must be a finite number >= 1, got {max_zoom}")
        self.images, self.size = list(images), (int(size[0]), int(size[1]))
        self.augment, self.scale, self.jitter, self.copies = augment, scale, jitter, copies
        self.mosaic = float(mosaic)
        self.zoom_out, self.max_zoom = float(zoom_out), float(max_zoom)

    @classmethod
    def from_folder(cls, root: str | Path, size: tuple[int, int], **options) -> UnlabeledImages:
        """Every readable image directly in ``root`` (suffixes :data:`IMAGE_SUFFIXES`); files that
        cannot be decoded are skipped, and a folder without any readable image is an error."""
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"{root} is not a folder of images")
        paths = [p for p in sorted(root.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        images = [img for img in map(read_rgb, paths) if img is not None]
        if len(images) < len(paths):
            log.warning(
                "%s: %d of %d image files could not be decoded: skipped",
                root,
                len(paths) - len(images),
                len(paths),
            )
        if not images:
            raise DatasetError(
                f"no readable images in {root} (looked for {', '.join(IMAGE_SUFFIXES)})"
            )
        return cls(images, size, **options)

    @classmethod
    def from_sources(
        cls,
        sources: Sequence[str | Path],
        size: tuple[int, int],
        every: int = 1,
        first: Sequence[torch.Tensor] = (),
        **options,
    ) -> UnlabeledImages:
        """``first`` (uint8 RGB tensors) then the images of each source in turn: a folder (as
        :meth:`from_folder`) or a video file (every ``every``-th frame, :func:`~.video.read_frames`)."""
        from .video import read_frames

        images = list(first)
        for source in map(Path, sources):
            if source.is_dir():
                images += cls.from_folder(source, size).images
            elif source.is_file():
                images += [torch.from_numpy(f).permute(2, 0, 1) for f in read_frames(source, every)]
            else:
                raise DatasetError(f"{source}: expected a folder of images or a video file")
        return cls(images, size, **options)

    @classmethod
    def from_photos(cls, photos, size: tuple[int, int], **options) -> UnlabeledImages:
        """The images of a :class:`~.persons.PersonPhotos` (their boxes are not used)."""
        return cls([p.image for p in photos], size, **options)

    def __len__(self) -> int:
        return len(self.images) * self.copies

    def plain(self) -> UnlabeledImages:
        """The same photos, each once and whole, without augmentation (calibration inputs: the
        distribution the network will see, not the training crops)."""
        return UnlabeledImages(self.images, self.size, augment=False)

    def _crop(self, h: int, w: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) of a random crop (torchvision's RandomResizedCrop rule)."""
        area = h * w
        for _ in range(10):
            target = area * float(torch.empty(1).uniform_(*self.scale))
            log_ratio = torch.empty(1).uniform_(math.log(3 / 4), math.log(4 / 3))
            ratio = math.exp(float(log_ratio))
            cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (1,)))
                left = int(torch.randint(0, w - cw + 1, (1,)))
                return top, left, ch, cw
        return 0, 0, h, w

    def _draw(self, img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``img`` (uint8 ``[3, h, w]``) cropped when augmenting and resized to ``size``."""
        if self.augment:
            top, left, ch, cw = self._crop(*img.shape[1:])
            img = img[:, top : top + ch, left : left + cw]
        return F.interpolate(
            img[None].float() / 255, size, mode="bilinear", align_corners=False, antialias=True
        )[0]

    def _mosaic(self, index: int) -> torch.Tensor:
        """A 2 x 2 mosaic around a random centre: photo ``index`` and three random others."""
        h, w = self.size
        # the centre in the middle third: a quadrant's aspect stays within 1:2 of the canvas's
        cy = int(torch.randint(h // 3, h - h // 3 + 1, (1,)))
        cx = int(torch.randint(w // 3, w - w // 3 + 1, (1,)))
        others = torch.randint(0, len(self.images), (3,)).tolist()
        x = torch.empty(3, h, w)
        quads = ((0, cy, 0, cx), (0, cy, cx, w), (cy, h, 0, cx), (cy, h, cx, w))
        for i, (y0, y1, x0, x1) in zip([index, *others], quads, strict=True):
            x[:, y0:y1, x0:x1] = self._draw(self.images[i], (y1 - y0, x1 - x0))
        return x

    def _zoomed_out(self, index: int) -> torch.Tensor:
        """Photo ``index`` whole, shrunk by a random factor and placed on a mean-colour canvas."""
        h, w = self.size
        r = float(torch.empty(1).uniform_(1.0, self.max_zoom))
        sh, sw = max(1, round(h / r)), max(1, round(w / r))
        small = F.interpolate(  # the whole photo: a crop would enlarge it again
            self.images[index][None].float() / 255,
            (sh, sw),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )[0]
        top = int(torch.randint(0, h - sh + 1, (1,)))
        left = int(torch.randint(0, w - sw + 1, (1,)))
        x = small.mean((1, 2), keepdim=True).expand(3, h, w).clone()
        x[:, top : top + sh, left : left + sw] = small
        return x

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        index %= len(self.images)
        if self.augment and self.mosaic > 0 and bool(torch.rand(1) < self.mosaic):
            x = self._mosaic(index)
        elif self.augment and self.zoom_out > 0 and bool(torch.rand(1) < self.zoom_out):
            x = self._zoomed_out(index)
        else:
            x = self._draw(self.images[index], self.size)
        if self.augment:
            if bool(torch.rand(1) < 0.5):
                x = x.flip(-1)
            b, c, s = (1 + self.jitter * (2 * torch.rand(3) - 1)).tolist()
            x = x * b
            mean = x.mean()
            x = (x - mean) * c + mean
            grey = x.mean(0, keepdim=True)
            x = (x - grey) * s + grey
        return x.clamp(0, 1), 0
