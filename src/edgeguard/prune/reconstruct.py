"""Layer-wise reconstruction after hard pruning (Optimal Brain Compression, Frantar & Alistarh,
NeurIPS 2022; SparseGPT, ICML 2023): the kept weights of every pruned layer are re-solved so that
the layer's output on calibration inputs stays as close as possible to the unpruned model's.

Layers are taken in the order they run.  At layer ``l``, ``x`` is its unfolded input in the model
as pruned and re-solved so far and ``x0`` the same input in the unpruned model, each with a
constant 1 appended when the layer has a bias.  A filter ``w`` (bias last) with kept set ``M`` gets
the ``w'`` with ``w'_{~M} = 0`` that minimises ``E[(w'^T x - w^T x0)^2]``: ``H_MM w'_M = (C w)_M``
with ``H = E[x x^T]`` and ``C = E[x x0^T]``.  Where nothing upstream changed (``x = x0``) this is
OBC's ``w'_M = w_M + H_MM^-1 H_{M,~M} w_{~M}``: the removed weights' share is carried by the kept
ones through the inputs' correlations; further down, the kept weights also undo the drift the
layers above left (and the bias its mean).  Filters with one kept set (a KGS group, a column
scheme's layer) share one Cholesky factor.  ``H`` is damped by ``damp`` times its mean diagonal
(SparseGPT's choice; a damping relative to each input's own mean square, scale-free, kept less
of CenterNet's AP50: docs/benchmarks.md).

The deployed MobileNets fold batch norm into their convolutions and their input channels differ in
scale by 10-100x; there one-shot pruning by weight magnitude or by the diagonal of ``H`` alone
(:mod:`.importance`) loses the detector.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..masks import set_mask
from ..sparsity import SparsityError, SparsityScheme

log = logging.getLogger(__name__)

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class _Stop(Exception):
    """Raised by a hook once the layer being reconstructed has seen its input: the rest of the
    forward pass is not needed."""


def unfold_input(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``[groups, S, K]``: the input patches each output position of ``module`` (a conv or linear
    layer) reads, ``K = in_channels / groups * prod(kernel)`` in the weight's own order, from input
    ``x`` (``[N, C, *spatial]``, or ``[..., in_features]`` for a linear layer)."""
    if isinstance(module, nn.Linear):
        return x.reshape(1, -1, x.shape[-1])
    if not isinstance(module, CONVS):
        raise SparsityError(f"reconstruction handles conv and linear layers, not {type(module)}")
    nd = x.dim() - 2
    if isinstance(module.padding, str):
        if module.padding == "valid":
            pads = [(0, 0)] * nd
        else:  # "same" (stride 1): the extra pixel of an even kernel goes after, as PyTorch does
            total = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size, strict=True)]
            pads = [(t // 2, t - t // 2) for t in total]
    else:
        pads = [(p, p) for p in module.padding]
    flat = [v for a, b in reversed(pads) for v in (a, b)]
    if any(flat):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, flat, mode=mode)
    for i, (k, s, d) in enumerate(
        zip(module.kernel_size, module.stride, module.dilation, strict=True)
    ):
        x = x.unfold(2 + i, (k - 1) * d + 1, s)[..., ::d]  # [N, C, *out, *kernel so far]
    n = x.shape[0]
    out = x.shape[2 : 2 + nd]
    g = module.groups
    # [N, C, *out, *kernel] -> [N, *out, C, *kernel] -> [groups, N * positions, C / g * kernel]
    x = x.permute(0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd))
    x = x.reshape(n * out.numel(), g, -1)
    return x.transpose(0, 1)


def _solve(
    w: torch.Tensor,
    keep: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    damp: float,
    bias: bool = False,
) -> torch.Tensor:
    """Rows of ``w`` (``[F, K]``, float64) re-solved on their kept entries ``keep`` (``[F, K]``
    bool): ``(H_MM + damp mean(diag H) I) w'_M = (C w)_M`` per kept set ``M``, removed entries
    zero (``bias``: the last entry is the bias, whose constant input is not damped)."""
    out = w * keep
    h = _damped(h, damp, bias)
    target = w @ c.T  # row f: C w_f
    patterns, which = torch.unique(keep, dim=0, return_inverse=True)
    for p, kept in enumerate(patterns):
        if not kept.any():
            continue
        rows = (which == p).nonzero().squeeze(1)
        cols = kept.nonzero().squeeze(1)
        chol = torch.linalg.cholesky(h[cols][:, cols])
        out[rows[:, None], cols[None]] = torch.cholesky_solve(target[rows][:, cols].T, chol).T
    return out


def _damped(h: torch.Tensor, damp: float, bias: bool = False) -> torch.Tensor:
    """``H + damp * mean(diag H) * I`` for ``[..., K, K]`` moments (SparseGPT's damping); with
    ``bias`` the last entry is the bias's constant input, left out of both the mean and the
    damping: damped by the inputs' scale (CenterNet's stem reads 0-255 pixels) it would pull the
    bias towards zero (``H`` stays positive definite: its Schur complement on the constant is
    ``1 - mu^T (H_xx + lambda I)^-1 mu > 0``)."""
    diag = h.diagonal(dim1=-2, dim2=-1)
    k = h.shape[-1] - 1 if bias else h.shape[-1]
    scale = diag[..., :k].mean(-1).clamp_min(1e-12)[..., None, None]
    eye = torch.eye(h.shape[-1], dtype=h.dtype)
    if bias:
        eye[-1, -1] = 0
    return h + damp * scale * eye


def _relative_error(new: torch.Tensor, w: torch.Tensor, m: dict[str, torch.Tensor]) -> float:
    """``E[(new^T x - w^T x0)^2] / E[(w^T x0)^2]`` summed over every filter of every group
    (``[G, F, K]`` weights; ``m``: the moments ``h``, ``c``, ``d = E[x0 x0^T]``, ``[G, K, K]``)."""
    ref = (w @ m["d"] * w).sum()
    err = (new @ m["h"] * new).sum() - 2 * (new @ m["c"] * w).sum() + ref
    return float(err.clamp_min(0) / ref.clamp_min(1e-30))


@torch.no_grad()
def reconstruct(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    inputs: Sequence[tuple],
    damp: float = 0.01,
    max_positions: int = 8192,
    refit: Iterable[str] = (),
    select: SparsityScheme | None = None,
) -> dict[str, tuple[float, float]]:
    """Hard-prune ``model``'s conv/linear layers to ``masks`` (``{layer: bool mask shaped like its
    weight}``, True = kept; attached as :func:`~edgeguard.sparsity.model.attach_masks` does) with
    the kept weights re-solved, layer by layer in the order they run, from the model's own forward
    passes over ``inputs`` (argument tuples, ``model(*args)``; a few dozen images are enough).
    ``max_positions``: output positions sampled per input and layer (evenly spaced); ``damp``:
    ``H``'s damping, relative to its mean diagonal.  The weights must still be the unpruned ones
    (the removed weights are what the kept ones take over).  Leaves the model in eval mode.
    Returns ``{layer: (relative output error of masking alone, after reconstruction)}`` on the
    calibration inputs.  ``refit``: more layers (not in ``masks``) re-solved with every weight
    kept and no mask attached, so that the unpruned layers (a MobileNet's depthwise convs, a
    detector's heads) undo the drift of the pruned ones too.  ``select``: the scheme the masks
    follow; each masked layer then keeps as many of its units as its mask does, but which ones is
    chosen at its turn by the OBS saliency on its inputs in the model pruned so far
    (:func:`obs_saliency`; weight magnitude ignores the inputs' scales); the chosen masks are
    the ones attached.  Raises on unknown layers, wrong mask shapes, masks that split a unit of
    ``select``, layers that do not run."""
    mods = dict(model.named_modules())
    refit = [n for n in refit if n not in masks]
    for n in [*masks, *refit]:
        if n not in mods or not isinstance(mods[n], (*CONVS, nn.Linear)):
            raise SparsityError(f"reconstruction: {n!r} is not a conv or linear layer of the model")
    for n, mask in masks.items():
        if tuple(mask.shape) != tuple(mods[n].weight.shape):
            raise SparsityError(
                f"reconstruction: mask of {n!r} is {tuple(mask.shape)}, its weight "
                f"{tuple(mods[n].weight.shape)}"
            )
        if select is not None:
            select.units_of_mask(mask)  # raises when the mask does not follow the scheme
    if not inputs:
        raise SparsityError("reconstruction needs at least one calibration input")
    model.eval()
    dense = copy.deepcopy(model)  # the targets: every layer's input before anything was pruned
    dense_mods = dict(dense.named_modules())
    wanted = {**{n: torch.ones_like(mods[n].weight, dtype=torch.bool) for n in refit}, **masks}
    order, calls = _run_order(model, {n: mods[n] for n in wanted}, inputs[0])
    missing = [n for n in wanted if n not in calls]
    if missing:
        raise SparsityError(f"reconstruction: layers {missing} do not run on the inputs")
    report = {}
    for i, name in enumerate(order):
        m = mods[name]
        bias = m.bias is not None
        mom = _moments(
            (model, m), (dense, dense_mods[name]), inputs, max_positions, calls[name] == 1, bias
        )
        g = mom["h"].shape[0]
        w = m.weight.detach().double().reshape(g, m.weight.shape[0] // g, -1)
        if select is not None and name in masks:
            masks = {**masks, name: _reselect(m.weight, masks[name], select, mom["h"], damp)}
            wanted[name] = masks[name]
        keep = wanted[name].to(torch.bool).reshape(w.shape)
        if bias:  # the bias: one more weight, always kept, on a constant input
            w = torch.cat([w, m.bias.detach().double().reshape(g, -1, 1)], 2)
            keep = torch.cat([keep, torch.ones_like(keep[..., :1])], 2)
        if keep.all():  # a refitted layer: every group at once (a depthwise conv has hundreds)
            rhs = (w @ mom["c"].transpose(1, 2)).transpose(1, 2)
            new = torch.linalg.solve(_damped(mom["h"], damp, bias), rhs).transpose(1, 2)
        else:
            new = torch.stack(
                [_solve(w[k], keep[k], mom["h"][k], mom["c"][k], damp, bias) for k in range(g)]
            )
        before, after = _relative_error(w * keep, w, mom), _relative_error(new, w, mom)
        if after >= before:  # a damped solve can lose to the weights as they are where nothing
            new, after = w * keep, before  # upstream changed: never make a layer worse
        report[name] = (before, after)
        if bias:
            m.bias.copy_(new[..., -1].reshape(m.bias.shape).to(m.bias.dtype))
            new = new[..., :-1]
        m.weight.copy_(new.reshape(m.weight.shape).to(m.weight.dtype))
        if name in masks:
            set_mask(m, masks[name])
        log.info(
            "reconstruct %d/%d %s: relative output error %.4f -> %.4f",
            i + 1,
            len(order),
            name,
            *report[name],
        )
    return report


def obs_saliency(weight: torch.Tensor, h: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """Weight-shaped (float64) OBS saliency of each weight, ``w_j^2 / [H^-1]_jj`` (the output
    error of removing it alone with the others re-solved; Optimal Brain Surgeon, Hassibi & Stork
    1993, as SparseGPT ranks weights): ``weight`` ``[F, C / groups, *kernel]``, ``h`` the moments
    of its unfolded input, ``[groups, K, K]`` with ``K = C / groups * prod(kernel)``, or ``K + 1``
    with the bias's constant input last (the bias, never removed, is re-solved too; its constant
    is not damped), damped by ``damp`` times its mean diagonal."""
    g, k = h.shape[0], weight[0].numel()
    bias = h.shape[-1] == k + 1
    inv = torch.cholesky_inverse(torch.linalg.cholesky(_damped(h, damp, bias)))
    w = weight.detach().double().reshape(g, -1, k)
    diag = inv.diagonal(dim1=-2, dim2=-1)[:, None, :k]
    return (w.square() / diag).reshape(weight.shape)


def _reselect(weight, mask, scheme: SparsityScheme, h, damp: float) -> torch.Tensor:
    """A mask removing as many of ``scheme``'s units of ``weight`` as ``mask`` does: those with the
    smallest OBS saliency per weight (size-normalised, as magnitude ranking is)."""
    lay = scheme.layout(weight.shape)
    removed = int((~scheme.units_of_mask(mask)).sum())
    score = lay.reduce(obs_saliency(weight, h, damp)) / lay.sizes.double()
    keep = torch.ones(lay.num_units, dtype=torch.bool)
    keep[torch.argsort(score, stable=True)[:removed]] = False
    return scheme.mask_from_units(tuple(weight.shape), keep).to(mask.device)


def _run_order(model, layers: Mapping[str, nn.Module], args: tuple) -> tuple[list[str], dict]:
    """The layers in the order of their first call in one forward pass, and calls per pass."""
    order, calls, hooks = [], {}, []
    for n, m in layers.items():

        def hook(module, inp, out, n=n):
            if n not in calls:
                order.append(n)
            calls[n] = calls.get(n, 0) + 1

        hooks.append(m.register_forward_hook(hook))
    try:
        model(*args)
    finally:
        for h in hooks:
            h.remove()
    return order, calls


def _moments(pruned, dense, inputs, max_positions: int, stop: bool, bias: bool) -> dict:
    """``{"h": E[x x^T], "c": E[x x0^T], "d": E[x0 x0^T]}``, ``[groups, K, K]`` float64, of one
    layer's unfolded inputs ``x`` in the pruned model and ``x0`` in the dense one (``(model,
    module)`` each) over ``inputs``, with a constant 1 appended when ``bias``."""
    got: dict[str, list[torch.Tensor]] = {"x": [], "x0": []}  # every call of the layer

    def capture(key):
        def hook(mod, inp):  # before the layer runs: with ``stop`` it never does
            x = inp[0].detach()
            cols = unfold_input(mod, x if x.dtype == torch.float64 else x.float())
            if cols.shape[1] > max_positions:  # evenly spaced positions
                cols = cols[:, torch.linspace(0, cols.shape[1] - 1, max_positions).long()]
            if bias:
                cols = torch.cat([cols, torch.ones_like(cols[..., :1])], 2)
            got[key].append(cols)
            if stop:
                raise _Stop

        return hook

    sums, count = {}, 0
    handles = [
        pruned[1].register_forward_pre_hook(capture("x")),
        dense[1].register_forward_pre_hook(capture("x0")),
    ]
    try:
        for args in inputs:
            for model in (pruned[0], dense[0]):
                with contextlib.suppress(_Stop):
                    model(*args)
            for x, x0 in zip(got["x"], got["x0"], strict=True):
                for key, (a, b) in {"h": (x, x), "c": (x, x0), "d": (x0, x0)}.items():
                    part = (a.transpose(1, 2) @ b).double()
                    sums[key] = sums[key] + part if key in sums else part
                count += x.shape[1]
            got["x"].clear()
            got["x0"].clear()
    finally:
        for h in handles:
            h.remove()
    return {k: v / max(count, 1) for k, v in sums.items()}
