"""Thin-plate splines (Bookstein 1989) for cloth deformation, as in Adversarial T-shirt (Xu et al.,
arXiv 1910.11099): a smooth map of the plane fitted to control-point pairs, exact at the control
points, minimal bending energy elsewhere.

Coordinates are normalised patch coordinates in [-1, 1]^2 (x right, y down, grid_sample's
convention).  A warp is *backward*: for each output location it gives where to read the flat patch,
which is what ``grid_sample`` needs; fitting it from the deformed points to the flat ones gives it
directly, no inversion needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import EdgeguardError


class TPSError(EdgeguardError, ValueError):
    """Too few, duplicate or misshaped control points."""


def _kernel(r2: torch.Tensor) -> torch.Tensor:
    """U(r) = r^2 log r^2 (0 at r = 0)."""
    return torch.where(r2 > 0, r2 * torch.log(r2.clamp_min(1e-30)), torch.zeros_like(r2))


class ThinPlateSpline:
    """``f(p) = a0 + A p + sum_i w_i U(|p - c_i|)`` with ``f(c_i) = t_i`` exactly.

    Args:
        source: ``[..., K, 2]`` control points (K >= 3, not collinear); target: ``[..., K, 2]``.
        regularization: lambda of the smoothing spline (0 interpolates).
    Batched over leading dims (one spline per sample).
    """

    def __init__(self, source: torch.Tensor, target: torch.Tensor, regularization: float = 0.0):
        if source.shape != target.shape or source.shape[-1] != 2 or source.shape[-2] < 3:
            raise TPSError(
                f"control points must be matching [..., K >= 3, 2] tensors, got "
                f"{tuple(source.shape)} and {tuple(target.shape)}"
            )
        src = source.double()
        k = src.shape[-2]
        d2 = (src[..., :, None, :] - src[..., None, :, :]).pow(2).sum(-1)
        big_k = _kernel(d2) + regularization * torch.eye(k, dtype=torch.float64)
        ones = torch.ones(*src.shape[:-1], 1, dtype=torch.float64)
        p = torch.cat([ones, src], -1)  # [..., K, 3]
        top = torch.cat([big_k, p], -1)
        bottom = torch.cat(
            [p.transpose(-1, -2), torch.zeros(*src.shape[:-2], 3, 3, dtype=torch.float64)], -1
        )
        system = torch.cat([top, bottom], -2)  # [..., K+3, K+3]
        rhs = torch.cat(
            [target.double(), torch.zeros(*src.shape[:-2], 3, 2, dtype=torch.float64)], -2
        )
        try:
            sol = torch.linalg.solve(system, rhs)
        except RuntimeError as err:  # singular: duplicate or collinear points
            raise TPSError(f"control points are duplicate or collinear: {err}") from None
        self.source, self.weights, self.affine = src, sol[..., :k, :], sol[..., k:, :]
        self.dtype = target.dtype

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        """``points [..., P, 2]`` -> ``[..., P, 2]``."""
        pts = points.double()
        d2 = (pts[..., :, None, :] - self.source[..., None, :, :]).pow(2).sum(-1)  # [..., P, K]
        ones = torch.ones(*pts.shape[:-1], 1, dtype=torch.float64)
        out = torch.cat([ones, pts], -1) @ self.affine + _kernel(d2) @ self.weights
        return out.to(self.dtype if torch.is_floating_point(points) else torch.float32)


def control_grid(n: int = 5) -> torch.Tensor:
    """``[n * n, 2]`` regular grid of control points over [-1, 1]^2."""
    t = torch.linspace(-1, 1, n)
    y, x = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([x.flatten(), y.flatten()], 1)


def random_tps_grid(
    batch: int,
    size: tuple[int, int],
    strength: float = 0.1,
    points: int = 5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``[B, H, W, 2]`` backward sampling grids of :func:`random_cloth` deformations."""
    return tps_grid(random_cloth(batch, strength, points, generator), size)


def random_cloth(
    batch: int, strength: float, points: int = 5, generator: torch.Generator | None = None
) -> ThinPlateSpline:
    """``batch`` backward splines of random cloth-like bending: the ``points x points`` control grid
    moved by Gaussian offsets of std ``strength`` (in patch half-widths)."""
    src = control_grid(points).expand(batch, -1, -1)
    moved = src + strength * torch.randn(src.shape, generator=generator)
    return ThinPlateSpline(moved, src)


def tps_grid(spline: ThinPlateSpline, size: tuple[int, int]) -> torch.Tensor:
    """Evaluate a (batched) backward spline on the pixel centres of an ``H x W`` output."""
    h, w = size
    ys = (torch.arange(h) + 0.5) / h * 2 - 1
    xs = (torch.arange(w) + 0.5) / w * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([gx.flatten(), gy.flatten()], 1)
    b = spline.source.shape[0] if spline.source.dim() == 3 else 1
    out = spline(pts.expand(b, -1, -1) if spline.source.dim() == 3 else pts)
    return out.view(b, h, w, 2).float()


def warp(patch: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Sample ``patch [B or 1, C, h, w]`` at ``grid [B, H, W, 2]``; outside the patch reads 0."""
    if patch.shape[0] == 1 and grid.shape[0] > 1:
        patch = patch.expand(grid.shape[0], -1, -1, -1)
    return F.grid_sample(patch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def fit_tps_to_checkerboard(
    reference: torch.Tensor, observed: torch.Tensor, regularization: float = 1e-3
) -> ThinPlateSpline:
    """Backward TPS of a printed checkerboard as it appears in a frame: maps points of the frame's
    deformed board (``observed [K, 2]``, normalised to the board's bounding box) to where they sit on
    the flat board (``reference [K, 2]`` in [-1, 1]^2).  Apply to a patch printed in its place."""
    return ThinPlateSpline(observed, reference, regularization)


def checkerboard_corners(frame, pattern: tuple[int, int]) -> torch.Tensor | None:
    """Inner corners ``[cols * rows, 2]`` (pixels, row-major) of a checkerboard in a BGR or grey
    uint8 ``frame`` (numpy), refined to sub-pixel accuracy; None when the board is not found."""
    import cv2

    grey = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    found, corners = cv2.findChessboardCorners(grey, pattern, None)
    if not found:
        return None
    crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 30, 1e-3)
    corners = cv2.cornerSubPix(grey, corners, (5, 5), (-1, -1), crit)
    c = torch.from_numpy(corners.reshape(-1, 2)).float()
    if (c[0] - c[-1]).sum() > 0:  # OpenCV may start from the bottom-right corner
        c = c.flip(0)
    return c


def tps_from_video(frames, pattern: tuple[int, int]) -> list[ThinPlateSpline]:
    """One backward TPS per frame in which the checkerboard (``pattern`` = inner corners (cols,
    rows)) is found: the deformations a patch printed on that cloth goes through.  Coordinates are
    normalised by the corners' bounding box, so the splines model the shape, not the position."""
    cols, rows = pattern
    xs = torch.linspace(-1, 1, cols)
    ys = torch.linspace(-1, 1, rows)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    reference = torch.stack([gx.flatten(), gy.flatten()], 1)
    out = []
    for frame in frames:
        c = checkerboard_corners(frame, pattern)
        if c is None:
            continue
        lo, hi = c.min(0).values, c.max(0).values
        observed = (c - lo) / (hi - lo).clamp_min(1e-6) * 2 - 1
        out.append(fit_tps_to_checkerboard(reference, observed))
    return out


def read_frames(path, every: int = 1, limit: int = 200) -> list:
    """BGR frames of a video file (every ``every``-th, at most ``limit``), for :func:`tps_from_video`."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise TPSError(f"cannot open the video {path}")
    frames, i = [], 0
    try:
        while len(frames) < limit:
            ok, frame = cap.read()
            if not ok:
                break
            if i % every == 0:
                frames.append(frame)
            i += 1
    finally:
        cap.release()
    if not frames:
        raise TPSError(f"no frames could be read from {path}")
    return frames
