"""Class activation maps (CAM, Zhou et al. 2016; Grad-CAM, Selvaraju et al. 2017) and the overlap of
top-k% regions between two maps, against a random-map baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .hooks import ExplainError, capture, check_images, get_layer, last_linear


def _upsample(cam: torch.Tensor, size: tuple[int, ...] | None, mode: str) -> torch.Tensor:
    if size is None or tuple(cam.shape[2:]) == tuple(size):
        return cam
    return F.interpolate(cam, size=size, mode=mode)


def grad_cam(
    model: nn.Module,
    inputs: torch.Tensor,
    layer: str | nn.Module,
    target: torch.Tensor,
    relu: bool = True,
    upsample: bool = True,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Grad-CAM of class ``target`` at ``layer``: ``sum_k mean_xy(dz/dA_k) * A_k``.

    Args:
        inputs: ``[N, C, H, W]``; target: ``[N]`` classes.
        relu: keep the positive part (as Grad-CAM does; Captum's ``relu_attributions=True``).
        upsample: resize to ``H x W`` with ``F.interpolate(mode=mode)`` (Captum's
            ``LayerAttribution.interpolate``).
    Returns ``[N, 1, H, W]`` (or the layer's resolution without ``upsample``).
    """
    check_images(inputs)
    _, module = get_layer(model, layer)
    with torch.enable_grad(), capture(module) as acts:
        logits = model(inputs)
        act = acts[0]
        (g,) = torch.autograd.grad(logits.gather(1, target.view(-1, 1)).sum(), act)
    weights = g.mean(dim=tuple(range(2, g.dim())), keepdim=True)
    cam = (weights * act).sum(1, keepdim=True).detach()
    if relu:
        cam = cam.clamp_min(0)
    return _upsample(cam, tuple(inputs.shape[2:]) if upsample else None, mode)


def class_activation_map(
    model: nn.Module,
    inputs: torch.Tensor,
    layer: str | nn.Module,
    target: torch.Tensor,
    classifier: str | None = None,
    upsample: bool = True,
    mode: str = "bilinear",
) -> torch.Tensor:
    """CAM of a GAP + linear network: ``sum_k w_{target,k} A_k`` with ``A`` the output of ``layer``
    (the last conv block) and ``w`` the final linear layer's weights (default: the last
    ``nn.Linear``).  Returns ``[N, 1, H, W]``, signed."""
    _, module = get_layer(model, layer)
    _, fc = get_layer(model, classifier or last_linear(model))
    with torch.no_grad(), capture(module) as acts:
        model(inputs)
    act = acts[0]
    if fc.weight.shape[1] != act.shape[1]:
        raise ExplainError(
            f"the classifier takes {fc.weight.shape[1]} features but the layer has {act.shape[1]} "
            "channels: CAM needs the layer right before global average pooling"
        )
    cam = torch.einsum("nk,nk...->n...", fc.weight[target], act).unsqueeze(1)
    return _upsample(cam, tuple(inputs.shape[2:]) if upsample else None, mode)


def top_mask(maps: torch.Tensor, fraction: float) -> torch.Tensor:
    """``[N, ...]`` bool: the top ``fraction`` of the values of each sample's map (at least one)."""
    if not 0 < fraction <= 1:
        raise ExplainError(f"fraction must be in (0, 1], got {fraction!r}")
    flat = maps.flatten(1)
    k = max(1, round(fraction * flat.shape[1]))
    idx = flat.topk(k, dim=1).indices
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, idx, True)
    return mask.view(maps.shape)


def topk_overlap(a: torch.Tensor, b: torch.Tensor, fraction: float = 0.1) -> torch.Tensor:
    """``[N]``: the share of the top-``fraction`` pixels of map ``a`` that are also among the top
    ``fraction`` of map ``b`` (maps ``[N, ...]`` of equal shape; both sets have the same size, so
    this is also the share of ``b``'s).  A map unrelated to ``b`` scores ``fraction`` on average."""
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    if a.shape != b.shape:
        raise ExplainError(f"maps differ in shape: {tuple(a.shape)} and {tuple(b.shape)}")
    ma, mb = top_mask(a, fraction), top_mask(b, fraction)
    return (ma & mb).sum(1).float() / ma.sum(1).float()


def random_overlap(
    b: torch.Tensor, fraction: float = 0.1, trials: int = 20, seed: int = 0
) -> torch.Tensor:
    """``[N]`` mean :func:`topk_overlap` of uniform random maps with ``b``: the chance baseline."""
    gen = torch.Generator().manual_seed(seed)
    flat = b.reshape(b.shape[0], -1)
    scores = [
        topk_overlap(torch.rand(flat.shape, generator=gen), flat, fraction) for _ in range(trials)
    ]
    return torch.stack(scores).mean(0)
