"""The attack losses on node logits and the nodes an attack aims at."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import GraphAttackError

# ----------------------------------------------------------------------------- losses
LOSSES = ("ce", "cw", "masked-ce", "prob-margin")


def node_loss(logits: torch.Tensor, y: torch.Tensor, kind: str, kappa: float = 0.0) -> torch.Tensor:
    """Loss to *maximise* over the attacked nodes (``logits [M, C]``, ``y [M]``): mean cross-entropy
    (``"ce"``), cross-entropy of the nodes still classified correctly, over all M (``"masked-ce"``,
    PyG's GRBCD default: flips are not spent on nodes already lost), or mean CW margin
    ``min(max_{c != y} z_c - z_y, kappa)`` (``"cw"``; a node misclassified by ``kappa`` stops pulling),
    or mean probability margin ``max_{c != y} p_c - p_y`` in [-1, 1] (``"prob-margin"``, PRBCD's
    default, Geisler et al. 2021: bounded, so confident and already-lost nodes do not dominate)."""
    if kind == "ce":
        return F.cross_entropy(logits, y)
    if kind == "masked-ce":
        right = (logits.argmax(1) == y).to(logits.dtype)
        return (F.cross_entropy(logits, y, reduction="none") * right).sum() / len(y)
    if kind == "prob-margin":
        logits = logits.softmax(1)
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    if kind == "prob-margin":
        return (other - z_y).mean()
    return (other - z_y).clamp(max=kappa).mean()


@torch.no_grad()
def attack_value(logits: torch.Tensor, y: torch.Tensor, kind: str) -> tuple[int, float]:
    """How well a discrete perturbation did, to compare candidates: (attacked nodes misclassified,
    loss), compared as a tuple (the loss breaks ties)."""
    return int((logits.argmax(1) != y).sum()), float(node_loss(logits, y, kind))


def attacked_nodes(data, target: int | None, nodes: torch.Tensor | None) -> torch.Tensor:
    """Indices of the attacked nodes: ``[target]``, ``nodes`` (indices or a mask), or the test mask;
    all must be labelled."""
    n = data.num_nodes
    if target is not None:
        if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < n:
            raise GraphAttackError(f"target must be a node index in [0, {n - 1}], got {target!r}")
        nodes = torch.tensor([target])
    elif nodes is None:
        if getattr(data, "test_mask", None) is None:
            raise GraphAttackError("pass nodes= (the graph has no test_mask)")
        nodes = data.test_mask.nonzero().squeeze(1)
    elif nodes.dtype == torch.bool:
        nodes = nodes.nonzero().squeeze(1)
    if nodes.numel() == 0:
        raise GraphAttackError("no nodes to attack")
    if (data.y[nodes] < 0).any():
        raise GraphAttackError(
            f"{int((data.y[nodes] < 0).sum())} attacked nodes have no label (y < 0); "
            "attack labelled nodes only"
        )
    return nodes


def check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise GraphAttackError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    return loss
