"""Expectation over transformation (EOT, Athalye et al. 2018) for a printed patch, and the printer's
colour transform.

A :class:`PatchTransform` draws, per sample, the patch's deformation and appearance in a photo:
cloth deformation (random TPS), scale, rotation, perspective, position jitter (all in the patch's
sampling grid) and brightness, contrast, noise and blur (on its colours)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..base import AttackError
from .tps import random_cloth


@dataclass
class EOT:
    """Ranges of the random transformations (0 turns one off).

    Lengths are in units of half the patch height (the half-width of a square patch: the warp is
    isotropic, so a rotation stays a rotation on a rectangular print).
    tps: std of the TPS control-point offsets; scale: relative (+-); rotation: degrees (+-);
    perspective: corner jitter; shift: position jitter (+-, in patch heights); brightness:
    additive (+-); contrast: multiplicative (+-); noise: std;
    blur: max Gaussian sigma (pixels of the patch as placed); splines: backward TPS of real cloth
    (:func:`tps.tps_from_video`), one drawn per sample instead of random bending when given."""

    tps: float = 0.08
    scale: float = 0.1
    rotation: float = 10.0
    perspective: float = 0.05
    shift: float = 0.05
    brightness: float = 0.1
    contrast: float = 0.15
    noise: float = 0.03
    blur: float = 0.7
    splines: tuple = ()  # TPS fitted to a tracked checkerboard (tps_from_video): used instead of random

    @classmethod
    def rigid(cls) -> EOT:
        """A rigid patch: these ranges without cloth deformation (the ablation of TPS alone)."""
        return cls(tps=0.0)

    @classmethod
    def thys(cls) -> EOT:
        """Thys et al. (2019)'s own training transformations: contrast 0.8-1.2, brightness +-0.1,
        rotation +-20 degrees, noise uniform in +-0.1 (here Gaussian of the same std, 0.058);
        no scale or position jitter, perspective, blur or cloth deformation."""
        return cls(
            tps=0.0,
            scale=0.0,
            rotation=20.0,
            perspective=0.0,
            shift=0.0,
            brightness=0.1,
            contrast=0.2,
            noise=0.1 / math.sqrt(3.0),
            blur=0.0,
        )

    @classmethod
    def none(cls) -> EOT:
        return cls(0, 0, 0, 0, 0, 0, 0, 0, 0)


def _homography(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """``[B, 3, 3]`` homographies mapping 4 points ``src [B, 4, 2]`` to ``dst``."""
    b = src.shape[0]
    x, y = src[..., 0], src[..., 1]
    u, v = dst[..., 0], dst[..., 1]
    z, o = torch.zeros_like(x), torch.ones_like(x)
    rows1 = torch.stack([x, y, o, z, z, z, -u * x, -u * y], -1)
    rows2 = torch.stack([z, z, z, x, y, o, -v * x, -v * y], -1)
    a = torch.cat([rows1, rows2], 1)
    rhs = torch.cat([u, v], 1)
    h = torch.linalg.solve(a.double(), rhs.double()).float()
    return torch.cat([h, torch.ones(b, 1)], 1).view(b, 3, 3)


def backward_map(
    points: torch.Tensor, eot: EOT, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Where ``points [B, P, 2]`` (coordinates of the nominal patch square, [-1, 1]^2 inside it)
    read in the flat patch under one random transformation per sample: scale, rotation, shift
    and perspective (one homography: where the patch's corners land), then TPS cloth bending.
    A read outside [-1, 1]^2 means "not patch"."""
    g = generator
    batch = points.shape[0]
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    s = 1 + eot.scale * (2 * torch.rand(batch, 1, 1, generator=g) - 1)
    a = math.radians(eot.rotation) * (2 * torch.rand(batch, generator=g) - 1)
    rot = torch.stack([torch.cos(a), -torch.sin(a), torch.sin(a), torch.cos(a)], 1).view(-1, 2, 2)
    shift = 2 * eot.shift * (2 * torch.rand(batch, 1, 2, generator=g) - 1)
    landed = s * corners @ rot.transpose(1, 2) + shift
    landed = landed + eot.perspective * torch.randn(batch, 4, 2, generator=g)
    hom = _homography(landed, corners.expand(batch, -1, -1))  # placed -> flat
    ph = torch.cat([points, torch.ones(*points.shape[:2], 1)], 2) @ hom.transpose(1, 2)
    pts = ph[..., :2] / ph[..., 2:].clamp_min(1e-6)
    if eot.splines:
        pick = torch.randint(len(eot.splines), (batch,), generator=g).tolist()
        pts = torch.stack([eot.splines[k](pts[i]) for i, k in enumerate(pick)])
    elif eot.tps > 0:
        pts = random_cloth(batch, eot.tps, 5, g)(pts)
    return pts


def appearance(
    patch: torch.Tensor, eot: EOT, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random brightness, contrast, blur and noise on ``patch [B, 3, h, w]`` (clamped to [0, 1])."""
    g = generator
    b = patch.shape[0]
    c = 1 + eot.contrast * (2 * torch.rand(b, 1, 1, 1, generator=g) - 1)
    br = eot.brightness * (2 * torch.rand(b, 1, 1, 1, generator=g) - 1)
    out = (patch - 0.5) * c + 0.5 + br
    if eot.blur > 0:
        sigma = float(eot.blur * torch.rand((), generator=g)) + 1e-3
        r = max(1, math.ceil(2 * sigma))
        t = torch.arange(-r, r + 1, dtype=patch.dtype)
        k = torch.exp(-(t**2) / (2 * sigma**2))
        k = k / k.sum()
        out = F.conv2d(
            F.pad(out, (r, r, 0, 0), mode="replicate"),
            k.view(1, 1, 1, -1).expand(3, 1, 1, -1),
            groups=3,
        )
        out = F.conv2d(
            F.pad(out, (0, 0, r, r), mode="replicate"),
            k.view(1, 1, -1, 1).expand(3, 1, -1, 1),
            groups=3,
        )
    if eot.noise > 0:
        out = out + eot.noise * torch.randn(out.shape, generator=g)
    return out.clamp(0, 1)


class ColorTransform:
    """The printer + camera colour change, ``c' = M c + b`` per pixel (clamped to [0, 1]).

    Default: a mild loss of contrast and saturation typical of a print photographed indoors
    (``M = 0.8 I + 0.05``, ``b = 0.05``), to be replaced by :meth:`fit` on a photographed chart."""

    def __init__(
        self, matrix: torch.Tensor | None = None, bias: torch.Tensor | None = None
    ) -> None:
        self.matrix = matrix if matrix is not None else 0.8 * torch.eye(3) + 0.05
        self.bias = bias if bias is not None else torch.full((3,), 0.05)

    @classmethod
    def fit(cls, printed: torch.Tensor, photographed: torch.Tensor) -> ColorTransform:
        """Least squares from a colour chart: ``printed [N, 3]`` (the colours sent to the printer)
        and ``photographed [N, 3]`` (as the camera saw them), both in [0, 1], N >= 4."""
        if printed.shape != photographed.shape or printed.dim() != 2 or printed.shape[1] != 3:
            raise AttackError(
                f"colour charts are [N, 3] pairs, got {tuple(printed.shape)} and "
                f"{tuple(photographed.shape)}"
            )
        if printed.shape[0] < 4:
            raise AttackError(
                f"need at least 4 chart colours to fit M and b, got {printed.shape[0]}"
            )
        a = torch.cat([printed.double(), torch.ones(len(printed), 1, dtype=torch.float64)], 1)
        sol = torch.linalg.lstsq(a, photographed.double()).solution  # [4, 3]
        return cls(sol[:3].T.float(), sol[3].float())

    def __call__(self, patch: torch.Tensor) -> torch.Tensor:
        out = torch.einsum("ij,bjhw->bihw", self.matrix.to(patch), patch)
        return (out + self.bias.to(patch).view(1, 3, 1, 1)).clamp(0, 1)
