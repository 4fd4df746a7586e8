"""Graph neural networks for node classification that take edge weights (so that topology attacks can
relax edge flips to continuous weights): GCN (Kipf & Welling 2017) and a weighted-mean GraphSAGE
(Hamilton et al. 2017).  ``model(x, edge_index, edge_weight=None) -> logits [N, classes]``, the
signature PyTorch Geometric's attacks expect."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.utils import scatter


def gcn_norm(edge_index: torch.Tensor, edge_weight: torch.Tensor | None, n: int):
    """``(src, dst, norm, deg)`` of ``D^-1/2 (A + I) D^-1/2`` with self-loops of weight 1 appended and
    degrees summed at the destination (PyG's ``gcn_norm``)."""
    loop = torch.arange(n, device=edge_index.device)
    src = torch.cat([edge_index[0], loop])
    dst = torch.cat([edge_index[1], loop])
    w = (
        torch.ones(edge_index.shape[1], device=edge_index.device)
        if edge_weight is None
        else edge_weight
    )
    w = torch.cat([w, torch.ones(n, dtype=w.dtype, device=w.device)])
    deg = torch.zeros(n, dtype=w.dtype, device=w.device).index_add_(0, dst, w)
    dinv = deg.clamp_min(1e-12).rsqrt()
    return src, dst, dinv[src] * w * dinv[dst], deg


def propagate(
    h: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, norm: torch.Tensor
) -> torch.Tensor:
    """``out_i = sum_e norm_e h_{src_e}`` over the edges into i."""
    return torch.zeros_like(h).index_add_(0, dst, h.index_select(0, src) * norm.unsqueeze(1))


class GCNLayer(nn.Module):
    """One GCN layer, ``D^-1/2 (A + I) D^-1/2 X W + b``; the same function as PyG's ``GCNConv``
    (tested against it), computed with ``index_add_``."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.lin = nn.Linear(in_features, out_features, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x, edge_index, edge_weight=None, norm=None):
        src, dst, nrm, _ = (
            norm if norm is not None else gcn_norm(edge_index, edge_weight, x.shape[0])
        )
        return propagate(self.lin(x), src, dst, nrm) + self.bias


class _LayerStack(nn.Module):
    """``layers`` graph layers ``layer(in, out)`` (the subclass's ``layer`` type) with dropout
    before each and ReLU between them; ``hidden`` features between layers."""

    layer: type[nn.Module]

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: int = 64,
        layers: int = 2,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        dims = [in_features] + [hidden] * (layers - 1) + [num_classes]
        self.convs = nn.ModuleList(self.layer(a, b) for a, b in itertools.pairwise(dims))
        self.dropout = dropout

    def forward(
        self, x: torch.Tensor, edge_index: torch.Tensor, edge_weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = F.dropout(x, self.dropout, self.training)
            x = conv(x, edge_index, edge_weight)
            if i < len(self.convs) - 1:
                x = x.relu()
        return x


class GCN(_LayerStack):
    """Two (or more) GCN layers with ReLU and dropout; edge weights enter the symmetric normalisation
    (degrees are weighted sums, so a weight of 0 removes an edge).

    :meth:`pair_gradients` gives the exact gradient of a loss with respect to the weight of every
    candidate node pair from one forward-backward pass over the real edges only (no message over the
    candidate pairs), which makes gradient topology attacks cheap on large graphs."""

    layer = GCNLayer
    dense_pairs_up_to = 8192  # nodes: all-pair gradients as one N x N matrix up to this size

    def forward(
        self, x: torch.Tensor, edge_index: torch.Tensor, edge_weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        # the normalisation is computed once for all layers (the generic stack would redo it)
        return self._forward(x, gcn_norm(edge_index, edge_weight, x.shape[0]))[0]

    def _forward(self, x, norm):
        hs, outs = [], []
        for i, conv in enumerate(self.convs):
            x = F.dropout(x, self.dropout, self.training)
            h = conv.lin(x)
            o = propagate(h, *norm[:3])
            hs.append(h)
            outs.append(o)
            x = o + conv.bias
            if i < len(self.convs) - 1:
                x = x.relu()
        return x, hs, outs

    def pair_gradients(
        self,
        x: torch.Tensor,
        edge_index: torch.Tensor,
        edge_weight: torch.Tensor | None,
        pairs: torch.Tensor,
        loss_fn,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, [P] dL/dw_ij)``: the gradient of ``loss_fn(logits)`` with respect to the weight of
        each undirected pair ``(i, j)`` of ``pairs [2, P]`` (both directions together), at the graph
        ``(edge_index, edge_weight)``; a pair need not be in the graph (its weight is then 0).

        With ``O = norm-weighted sum of H`` per layer and ``G = dL/dO``: ``dL/dw_{j->i} =
        dinv_i dinv_j <G_i, H_j> + dL/ddeg_i``, where ``dL/ddeg_i = -1/(2 deg_i) sum over the edges
        at i of norm_e <G_dst, H_src>`` (each edge counted at both of its ends)."""
        norm = gcn_norm(edge_index, edge_weight, x.shape[0])
        src, dst, nrm, deg = norm
        with torch.enable_grad():
            logits, hs, outs = self._forward(x, norm)
            loss = loss_fn(logits)
            grads = torch.autograd.grad(loss, outs)
        dinv = deg.clamp_min(1e-12).rsqrt()
        n = x.shape[0]
        i, j = pairs
        # all pairs of a small graph: the scores of every layer in one N x N matmul beat gathers
        dense = n <= self.dense_pairs_up_to and pairs.shape[1] == n * (n - 1) // 2
        gs, hs_, dsum = [], [], torch.zeros_like(deg)
        total = None if dense else torch.zeros(pairs.shape[1], dtype=x.dtype)
        for h, g in zip(hs, grads, strict=True):
            h = h.detach()
            a = (g[dst] * h[src]).sum(1) * nrm  # norm_e <G_dst, H_src> per edge
            d = torch.zeros_like(deg).index_add_(0, dst, a).index_add_(0, src, a) * (-0.5 / deg)
            if dense:
                gs.append(g * dinv[:, None])
                hs_.append(h * dinv[:, None])
                dsum += d
            else:
                direct = (g[i] * h[j]).sum(1) + (g[j] * h[i]).sum(1)
                total += dinv[i] * dinv[j] * direct + d[i] + d[j]
        if dense:  # [G, H, d, 1] @ [H, G, 1, d]^T = G_i.H_j + H_i.G_j + d_i + d_j for every (i, j)
            one = torch.ones(n, 1, dtype=x.dtype)
            left = torch.cat([*gs, *hs_, dsum[:, None], one], 1)
            right = torch.cat([*hs_, *gs, one, dsum[:, None]], 1)
            total = (left @ right.T)[i, j]
        return loss.detach(), total


class WeightedSAGEConv(nn.Module):
    """GraphSAGE layer with a weighted mean of the neighbours: ``W_1 x_i + W_2 sum_j w_ij x_j /
    max(sum_j w_ij, 1)`` (a weight of 0 removes an edge, as in the GCN)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.root = nn.Linear(in_features, out_features)
        self.neigh = nn.Linear(in_features, out_features, bias=False)

    def forward(self, x, edge_index, edge_weight=None):
        src, dst = edge_index
        w = (
            torch.ones(src.numel(), dtype=x.dtype, device=x.device)
            if edge_weight is None
            else edge_weight
        )
        agg = scatter(x[src] * w.unsqueeze(1), dst, 0, dim_size=x.shape[0], reduce="sum")
        deg = scatter(w, dst, 0, dim_size=x.shape[0], reduce="sum").clamp_min(1).unsqueeze(1)
        return self.root(x) + self.neigh(agg / deg)


class GraphSAGE(_LayerStack):
    """Two (or more) weighted-mean GraphSAGE layers with ReLU and dropout."""

    layer = WeightedSAGEConv


def gcn(in_features: int, num_classes: int, hidden: int = 64, dropout: float = 0.5) -> GCN:
    return GCN(in_features, num_classes, hidden=hidden, dropout=dropout)


def graphsage(
    in_features: int, num_classes: int, hidden: int = 64, dropout: float = 0.5
) -> GraphSAGE:
    return GraphSAGE(in_features, num_classes, hidden=hidden, dropout=dropout)
