"""Edges as keys, candidate pairs, budgets and flips on an undirected PyG graph (both directions of
every edge, no self-loops, no duplicates); no dense N x N matrix is ever built."""

from __future__ import annotations

import torch

from .errors import GraphAttackError


# ----------------------------------------------------------------------------- graph checks
def edge_keys(edge_index: torch.Tensor, n: int) -> torch.Tensor:
    """Sorted int64 keys ``i * n + j`` of the undirected pairs (i < j) of ``edge_index``."""
    i, j = edge_index
    keep = i < j
    return torch.sort(i[keep] * n + j[keep]).values


def pair_exists(pairs: torch.Tensor, keys: torch.Tensor, n: int) -> torch.Tensor:
    """``[P]`` bool: is each pair (i < j) of ``pairs [2, P]`` an edge (``keys`` from :func:`edge_keys`)."""
    q = pairs[0] * n + pairs[1]
    if keys.numel() == 0:
        return torch.zeros_like(q, dtype=torch.bool)
    pos = torch.searchsorted(keys, q).clamp_max(keys.numel() - 1)
    return keys[pos] == q


def check_graph(data) -> None:
    """Raise :class:`GraphAttackError` for self-loops, duplicate edges, or a directed edge list;
    isolated nodes are allowed (they can gain edges; GCN's self-loops keep them defined)."""
    for attr in ("x", "edge_index", "y"):
        if getattr(data, attr, None) is None:
            raise GraphAttackError(
                f"the graph has no {attr!r}; a PyG Data(x, edge_index, y) is needed"
            )
    ei, n = data.edge_index, data.num_nodes
    if ei.dim() != 2 or ei.shape[0] != 2 or ei.dtype != torch.long:
        raise GraphAttackError(f"edge_index must be an int64 tensor [2, E], got {tuple(ei.shape)}")
    if ei.numel() and (ei.min() < 0 or ei.max() >= n):
        raise GraphAttackError(f"edge_index refers to nodes outside [0, {n - 1}]")
    if (ei[0] == ei[1]).any():
        raise GraphAttackError(
            f"the graph has {int((ei[0] == ei[1]).sum())} self-loops; remove them first "
            "(torch_geometric.utils.remove_self_loops): flips are between distinct nodes"
        )
    keys = ei[0] * n + ei[1]
    if torch.unique(keys).numel() != keys.numel():
        raise GraphAttackError(
            "the graph has duplicate edges; merge them first (torch_geometric.utils.coalesce)"
        )
    fwd = edge_keys(ei, n)
    bwd = edge_keys(ei.flip(0), n)
    if fwd.numel() != bwd.numel() or not torch.equal(fwd, bwd):
        raise GraphAttackError(
            "the graph is directed (some edge lacks its reverse); topology attacks need an undirected "
            "graph (torch_geometric.utils.to_undirected)"
        )


def resolve_budget(budget: float | int, num_edges: int, candidates: int | None = None) -> int:
    """Number of flips: a float in (0, 1] is a fraction of ``num_edges`` (rounded, at least 1); an
    int >= 1 is a number of flips.  More flips than ``candidates`` is an error."""
    if isinstance(budget, float):
        if not 0 < budget <= 1:
            raise GraphAttackError(
                f"budget must be a fraction in (0, 1] or an integer number of flips, got {budget}"
            )
        flips = max(1, round(budget * num_edges))
    elif isinstance(budget, int) and not isinstance(budget, bool):
        if budget < 1:
            raise GraphAttackError(
                f"a budget given as a number of flips must be >= 1, got {budget}"
            )
        flips = budget
    else:
        raise GraphAttackError(f"budget must be a float in (0, 1] or an int >= 1, got {budget!r}")
    if candidates is not None and flips > candidates:
        raise GraphAttackError(
            f"a budget of {flips} flips exceeds the {candidates} candidate pairs of this attack"
        )
    return flips


def flip_pairs(data, pairs: torch.Tensor):
    """A copy of ``data`` with the undirected pairs ``pairs [2, P]`` (i < j, distinct) flipped."""
    n = data.num_nodes
    keys = edge_keys(data.edge_index, n)
    flip = torch.unique(pairs[0] * n + pairs[1])
    exists = torch.isin(flip, keys)
    kept = keys[~torch.isin(keys, flip[exists])]
    new = torch.cat([kept, flip[~exists]])
    i, j = new // n, new % n
    out = data.clone()
    out.edge_index = torch.stack([torch.cat([i, j]), torch.cat([j, i])])
    return out


# ----------------------------------------------------------------------------- candidates
def candidate_pairs(
    data,
    max_pairs: int,
    generator: torch.Generator,
    target: int | None = None,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[2, C]`` candidate pairs (i < j): every pair touching ``target`` (targeted attacks); every
    pair when there are at most ``max_pairs``; else a random block of ``max_pairs`` distinct pairs
    (three quarters uniform pairs, one quarter existing edges, so removals stay possible).  Pairs in
    ``exclude`` (keys ``i * n + j``) are left out."""
    n = data.num_nodes
    if target is not None:
        others = torch.cat([torch.arange(target), torch.arange(target + 1, n)])
        t = torch.full_like(others, target)
        pairs = torch.stack([torch.minimum(t, others), torch.maximum(t, others)])
    elif n * (n - 1) // 2 <= max_pairs:
        pairs = torch.triu_indices(n, n, 1)
    else:
        m = max_pairs * 3 // 4
        i = torch.randint(n, (m,), generator=generator)
        j = torch.randint(n, (m,), generator=generator)
        keys = edge_keys(data.edge_index, n)
        k = min(keys.numel(), max_pairs - m)
        picked = keys[torch.randperm(keys.numel(), generator=generator)[:k]]
        lo, hi = torch.minimum(i, j), torch.maximum(i, j)
        allk = torch.unique(torch.cat([(lo * n + hi)[lo != hi], picked]))
        pairs = torch.stack([allk // n, allk % n])
    if exclude is not None and exclude.numel():
        pairs = pairs[:, ~torch.isin(pairs[0] * n + pairs[1], exclude)]
    return pairs
