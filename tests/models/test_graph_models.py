"""GCN against PyG's GCNConv; exact pair gradients against autograd; weighted GraphSAGE."""

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.nn import GCNConv
from torch_geometric.utils import coalesce, to_undirected

from edgeguard.models.graph import GCN, GraphSAGE


def _graph(n=40, m=90, seed=0):
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(n, (2, m), generator=g)
    ei = coalesce(to_undirected(ei[:, ei[0] != ei[1]]))
    return torch.randn(n, 6, generator=g), ei


def test_gcn_layer_equals_pyg_gcnconv():
    x, ei = _graph()
    model = GCN(6, 3, hidden=5)
    ref = GCNConv(6, 5)
    with torch.no_grad():
        ref.lin.weight.copy_(model.convs[0].lin.weight)
        ref.bias.normal_()
        model.convs[0].bias.copy_(ref.bias)
    w = torch.rand(ei.shape[1])
    assert torch.allclose(model.convs[0](x, ei, w), ref(x, ei, w), atol=1e-6)
    assert torch.allclose(model.convs[0](x, ei), ref(x, ei), atol=1e-6)


@pytest.mark.parametrize("dense", [True, False])
def test_pair_gradients_equal_autograd_through_every_pair(dense):
    x, ei = _graph()
    n = x.shape[0]
    model = GCN(6, 3, hidden=5).eval()
    model.dense_pairs_up_to = n if dense else 0
    y = torch.randint(3, (n,))
    pairs = torch.triu_indices(n, n, 1)
    w = torch.rand(ei.shape[1]) + 0.5  # any weighted graph, not only 0/1

    def loss_fn(z):
        return F.cross_entropy(z[:15], y[:15])

    loss, g = model.pair_gradients(x, ei, w, pairs, loss_fn)
    s = torch.zeros(pairs.shape[1], requires_grad=True)
    full = torch.cat([ei, pairs, pairs.flip(0)], 1)
    ref_loss = loss_fn(model(x, full, torch.cat([w, s, s])))
    (ref,) = torch.autograd.grad(ref_loss, s)
    assert float(loss.detach()) == pytest.approx(float(ref_loss.detach()), rel=1e-6)
    assert torch.allclose(g, ref, atol=1e-6 * float(ref.abs().max()) + 1e-9)


def test_a_zero_weight_edge_is_no_edge():
    x, ei = _graph()
    for model in (GCN(6, 3), GraphSAGE(6, 3)):
        model.eval()
        extra = torch.tensor([[0, 7], [7, 0]])
        with_zero = model(
            x, torch.cat([ei, extra], 1), torch.cat([torch.ones(ei.shape[1]), torch.zeros(2)])
        )
        assert torch.allclose(with_zero, model(x, ei), atol=1e-6)
