"""A differentiable PyTorch port of OpenCV's HOG + linear SVM people detector (Dalal & Triggs 2005,
``cv2.HOGDescriptor`` with its defaults and ``getDefaultPeopleDetector()``).

It reproduces OpenCV 4.x step by step, so window scores agree with ``hog.compute`` / ``hog.detect``
to float rounding:

- the image quantised to 8 bits as OpenCV sees it (straight-through gradient), gamma correction
  ``sqrt`` of the 0-255 intensities; central differences ``[-1, 0, 1]`` with
  BORDER_REFLECT_101 at the (padded) image edges; per pixel the channel of largest squared magnitude
  (ties: B, then G, then R, as OpenCV resolves them on BGR images);
- orientation from OpenCV's ``fastAtan2`` polynomial (about 0.3 degrees from ``atan2``; the exact
  angle would move bin weights by up to 1.5%), unsigned, 9 bins, linear vote between the two
  nearest bin centres;
- per 16x16 block a Gaussian window (sigma 4, centred at pixel 8, as OpenCV) and bilinear votes into
  the four 8x8 cells (votes falling outside the block dropped);
- L2-Hys block normalisation with OpenCV's constants: ``v / (|v| + 0.1 * 36)``, clip at 0.2,
  ``v / (|v| + 1e-3)``;
- descriptor order blocks x-major, cells x-major, then bins; score ``w . d + rho``.

Every block on the 8-pixel grid is computed once for the whole image and each window's score is a
convolution of the block features with the SVM weights, so a 640x480 image is one pass.  Scores are
differentiable almost everywhere with respect to the pixels (not at bin or channel switches).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from .base import Detections, DetectorError, PersonDetector, check_images, group_rectangles

WIN_W, WIN_H, BLOCK, CELL, STRIDE, NBINS = 64, 128, 16, 8, 8, 9
BLOCKS_X, BLOCKS_Y = (WIN_W - BLOCK) // STRIDE + 1, (WIN_H - BLOCK) // STRIDE + 1  # 7, 15

# OpenCV's fastAtan2 coefficients (degrees), from its polynomial fit of atan on [0, 1].
_P1 = 0.9997878412794807 * 180 / math.pi
_P3 = -0.3258083974640975 * 180 / math.pi
_P5 = 0.1555786518463281 * 180 / math.pi
_P7 = -0.04432655554792128 * 180 / math.pi
_FLT_EPS = 2.220446049250313e-16  # DBL_EPSILON, as OpenCV adds it
_GAMMA = torch.sqrt(torch.arange(256, dtype=torch.float64)).float()  # correctly rounded sqrt(v)


def fast_atan2_deg(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """OpenCV's ``fastAtan2(y, x)`` in degrees, [0, 360)."""
    ax, ay = x.abs(), y.abs()
    small = ax >= ay
    c = torch.where(small, ay / (ax + _FLT_EPS), ax / (ay + _FLT_EPS))
    c2 = c * c
    a = (((_P7 * c2 + _P5) * c2 + _P3) * c2 + _P1) * c
    a = torch.where(small, a, 90.0 - a)
    a = torch.where(x < 0, 180.0 - a, a)
    a = torch.where(y < 0, 360.0 - a, a)
    return a


def _safe_sqrt(t: torch.Tensor) -> torch.Tensor:
    """sqrt with a finite gradient at 0 (the gamma of black pixels)."""
    pos = t > 0
    return torch.where(
        pos, torch.sqrt(torch.where(pos, t, torch.ones_like(t))), torch.zeros_like(t)
    )


def _pad_reflect101(img: torch.Tensor, pad_x: int, pad_y: int) -> torch.Tensor:
    """BORDER_REFLECT_101 padding of any width (torch's ``reflect`` mode allows < size only)."""
    _, _, h, w = img.shape
    xs = torch.arange(-pad_x, w + pad_x)
    ys = torch.arange(-pad_y, h + pad_y)

    def reflect(i, n):
        if n == 1:
            return torch.zeros_like(i)
        period = 2 * (n - 1)
        i = i.remainder(period)
        return torch.where(i >= n, period - i, i)

    return img[:, :, reflect(ys, h)][:, :, :, reflect(xs, w)]


def gradients(images: torch.Tensor, pad_x: int = 0, pad_y: int = 0):
    """Per-pixel (magnitude, angle in degrees [0, 360)) of ``images [B, 3, H, W]`` in [0, 1] over the
    image grown by ``pad`` pixels each side (OpenCV's padded area, REFLECT_101)."""
    # OpenCV sees 8-bit images: quantise (straight-through gradient), then its gamma LUT sqrt(v).
    # Exact integers matter: gradient ties between channels are broken by float comparisons.
    # torch's float32 sqrt is not correctly rounded (49 of the 256 values differ), so the forward
    # values come from a table as OpenCV's, the gradient from sqrt.
    v = images * 255.0
    q = v.detach().round().clamp(0, 255)
    smooth = _safe_sqrt(q + (v - v.detach()))
    g = _GAMMA.to(images.device, images.dtype)[q.long()] + (smooth - smooth.detach())
    g = _pad_reflect101(g, pad_x + 1, pad_y + 1)
    dx = g[:, :, 1:-1, 2:] - g[:, :, 1:-1, :-2]
    dy = g[:, :, 2:, 1:-1] - g[:, :, :-2, 1:-1]
    mag2 = dx * dx + dy * dy  # [B, 3, H', W']
    # ties go to B, then G, then R (OpenCV's order on BGR images)
    m_r, m_g, m_b = mag2.unbind(1)
    take_b = (m_b >= m_g) & (m_b >= m_r)
    take_g = ~take_b & (m_g >= m_r)
    dx = torch.where(take_b, dx[:, 2], torch.where(take_g, dx[:, 1], dx[:, 0]))
    dy = torch.where(take_b, dy[:, 2], torch.where(take_g, dy[:, 1], dy[:, 0]))
    mag = _safe_sqrt(dx * dx + dy * dy)
    return mag, fast_atan2_deg(dy, dx)


def orientation_histograms(mag: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """``[B, 9, H, W]``: each pixel's magnitude split between its two nearest unsigned bins."""
    a = angle * (NBINS / 180.0) - 0.5  # OpenCV: angle * nbins / pi - 0.5, angle in [0, 2 pi)
    lo = torch.floor(a.detach())
    frac = a - lo
    lo = lo.long().remainder(NBINS)
    hi = (lo + 1).remainder(NBINS)
    hist = torch.zeros(mag.shape[0], NBINS, *mag.shape[1:], dtype=mag.dtype, device=mag.device)
    hist = hist.scatter_add(1, lo[:, None], (mag * (1 - frac))[:, None])
    return hist.scatter_add(1, hi[:, None], (mag * frac)[:, None])


@lru_cache(maxsize=4)
def block_kernels(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[4, 1, 16, 16]``: Gaussian window x bilinear cell weight of every block pixel, one kernel per
    cell in OpenCV's order (cx, cy) = (0, 0), (0, 1), (1, 0), (1, 1)."""
    idx = torch.arange(BLOCK, dtype=torch.float64)
    d2 = (idx - BLOCK * 0.5) ** 2  # OpenCV centres the Gaussian at pixel 8, not 7.5
    sigma = (BLOCK + BLOCK) / 8.0
    gauss = torch.exp(-(d2[:, None] + d2[None, :]) / (2 * sigma * sigma)).float().double()
    pos = (idx + 0.5) / CELL - 0.5  # pixel centre in cell units
    c0 = torch.floor(pos)
    f = pos - c0
    weights = []
    for cx in (0, 1):
        for cy in (0, 1):
            wx = torch.where(c0 == cx, 1 - f, torch.where(c0 + 1 == cx, f, torch.zeros_like(f)))
            wy = torch.where(c0 == cy, 1 - f, torch.where(c0 + 1 == cy, f, torch.zeros_like(f)))
            weights.append(gauss * wy[:, None] * wx[None, :])
    return torch.stack(weights)[:, None].to(dtype)


def block_features(mag: torch.Tensor, angle: torch.Tensor, l2hys: float = 0.2) -> torch.Tensor:
    """``[B, 36, By, Bx]`` normalised histograms of every block on the 8-pixel grid."""
    hist = orientation_histograms(mag, angle)  # [B, 9, H, W]
    b, _, h, w = hist.shape
    hc, wc = h // CELL, w // CELL  # pixels past the last whole cell belong to no block
    hist = hist[:, :, : hc * CELL, : wc * CELL].reshape(b, NBINS, hc, CELL, wc, CELL)
    # The block kernel of cell c, restricted to the 8x8 quarter (sy, sx) of the block, applied to
    # every cell (a [.., 64] x [64, 16] product: cheap forward and backward) ...
    k = block_kernels(hist.dtype).to(hist.device).view(4, 2, CELL, 2, CELL)  # c, sy, i, sx, j
    k = k.permute(2, 4, 0, 1, 3).reshape(CELL * CELL, 16)  # (i, j) x (c, sy, sx)
    cellpix = hist.permute(0, 1, 2, 4, 3, 5).reshape(-1, CELL * CELL)  # (b, n, y, x) x (i, j)
    part = (cellpix @ k).view(b, NBINS, hc, wc, 4, 2, 2).permute(0, 1, 4, 5, 6, 2, 3)
    # ... then a block sums its four quarters: cells (by + sy, bx + sx).
    by, bx = hc - 1, wc - 1
    cells = sum(part[:, :, :, sy, sx, sy : sy + by, sx : sx + bx] for sy in (0, 1) for sx in (0, 1))
    v = cells.transpose(1, 2).reshape(b, 4 * NBINS, by, bx)
    v = v / (v.norm(dim=1, keepdim=True) + 0.1 * 4 * NBINS)
    v = v.clamp(max=l2hys)
    return v / (v.norm(dim=1, keepdim=True) + 1e-3)


def descriptor(window: torch.Tensor) -> torch.Tensor:
    """``[B, 3780]`` HOG descriptors of 64x128 windows ``[B, 3, 128, 64]`` in [0, 1], in
    ``cv2.HOGDescriptor().compute`` order."""
    check_images(window)
    if tuple(window.shape[2:]) != (WIN_H, WIN_W):
        raise DetectorError(f"a HOG window is 128x64 (H x W), got {tuple(window.shape[2:])}")
    f = block_features(*gradients(window))  # [B, 36, 15, 7]
    return f.permute(0, 3, 2, 1).reshape(len(window), -1)  # blocks x-major, then y


def default_people_svm() -> tuple[torch.Tensor, float]:
    """OpenCV's INRIA-trained linear SVM: (weights [36, 15, 7] as block-feature kernels, rho)."""
    import cv2

    coef = torch.from_numpy(
        cv2.HOGDescriptor_getDefaultPeopleDetector().astype("float32")
    ).flatten()
    w = coef[:-1].view(BLOCKS_X, BLOCKS_Y, 4 * NBINS).permute(2, 1, 0).contiguous()
    return w, float(coef[-1])


class HOGPersonDetector(PersonDetector):
    """OpenCV's HOG people detector, differentiable.

    Args:
        hit_threshold: windows scoring at least this are detections (OpenCV's ``hitThreshold``, 0).
        scale: pyramid factor between levels (``detectMultiScale``'s ``scale``, 1.05); levels go
            down until the image is smaller than a window.
        padding: pixels added each side (multiple of 8; OpenCV's ``padding``, 8).
        group_threshold: OpenCV's ``finalThreshold`` of rectangle grouping (2); 0 keeps every window.
    Scores are SVM margins (unbounded; > 0 means person).
    """

    name = "hog"

    def __init__(
        self,
        hit_threshold: float = 0.0,
        scale: float = 1.05,
        padding: int = 8,
        group_threshold: int = 2,
        max_levels: int = 64,
    ) -> None:
        super().__init__()
        if padding < 0 or padding % STRIDE:
            raise DetectorError(f"padding must be a multiple of {STRIDE} >= 0, got {padding}")
        if scale < 1:
            raise DetectorError(f"scale must be >= 1, got {scale}")
        w, rho = default_people_svm()
        self.register_buffer("svm", w[None])  # [1, 36, 15, 7]
        self.rho = rho
        self.threshold = hit_threshold
        self.scale, self.padding = scale, padding
        self.group_threshold, self.max_levels = group_threshold, max_levels

    def window_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores of every window at this image size: ``([B, Ny, Nx] scores, [Ny, Nx, 2] window
        top-left (x, y) in pixels, may be negative with padding)``."""
        p = self.padding
        f = block_features(*gradients(images, p, p))
        s = F.conv2d(f, self.svm.to(f.dtype)).squeeze(1) + self.rho
        ny, nx = s.shape[1:]
        ys = torch.arange(ny) * STRIDE - p
        xs = torch.arange(nx) * STRIDE - p
        return s, torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)

    def levels(self, h: int, w: int) -> list[float]:
        """Pyramid scales as ``detectMultiScale``: 1, s, s^2, ... while the image holds a window."""
        out, s = [], 1.0
        for _ in range(self.max_levels):
            out.append(s)
            if round(w / s) < WIN_W or round(h / s) < WIN_H or self.scale <= 1:
                break
            s *= self.scale
        return out

    def candidates(self, images: torch.Tensor) -> list[Detections]:
        check_images(images)
        h, w = images.shape[2:]
        boxes, scores = [[] for _ in images], [[] for _ in images]
        for s in self.levels(h, w):
            size = (round(h / s), round(w / s))
            if size[0] < WIN_H or size[1] < WIN_W:
                continue
            img = (
                images
                if s == 1.0
                else F.interpolate(
                    images, size=size, mode="bilinear", align_corners=False, antialias=False
                )
            )
            sc, tl = self.window_scores(img)
            tl = tl.reshape(-1, 2).to(images.dtype)
            # OpenCV: Rect(cvRound(x * s), cvRound(y * s), cvRound(64 * s), cvRound(128 * s))
            x1 = (tl * s).round()
            box = torch.cat([x1, x1 + torch.tensor([round(WIN_W * s), round(WIN_H * s)])], 1)
            for i in range(len(images)):
                boxes[i].append(box)
                scores[i].append(sc[i].reshape(-1))
        return [
            Detections(torch.cat(b), torch.cat(sc)) for b, sc in zip(boxes, scores, strict=True)
        ]

    def merge(self, det: Detections) -> Detections:
        """OpenCV's rectangle grouping (none when ``group_threshold`` is 0)."""
        return group_rectangles(det, self.group_threshold) if self.group_threshold else det
