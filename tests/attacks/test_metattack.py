"""Metattack: the meta-gradient against plain autograd through an unrolled training, the greedy
order, the singleton filter, poisoning strength against baselines, bad input."""

import pytest
import torch
import torch.nn.functional as F

from edgeguard.attacks.graph import DICE, GraphAttackError, Metattack, get_graph_attack, poison
from edgeguard.attacks.graph.metattack import feature_operand, normalized_dense
from edgeguard.data.graphs import synthetic_graph
from edgeguard.engine import TrainConfig
from edgeguard.models.graph import gcn

CFG = TrainConfig(epochs=60, lr=0.01, weight_decay=5e-4, scheduler="none", progress=False)


def _reference_meta_gradient(att, adj, x, labels, train, weights):
    """The meta-gradient by autograd alone: dense Â, differentiable SGD-with-momentum unrolled."""
    n = adj.shape[0]
    delta = torch.zeros(n, n, dtype=adj.dtype, requires_grad=True)
    a = normalized_dense(adj + (1 - 2 * adj) * (delta + delta.T))
    w = [p.clone().requires_grad_(True) for p in weights]
    v = [torch.zeros_like(p) for p in w]
    for _ in range(att.train_iters):
        loss = F.cross_entropy((a @ a @ x @ w[0] @ w[1])[train], labels[train])
        g = torch.autograd.grad(loss, w, create_graph=True)
        v = [att.momentum * vi + gi for vi, gi in zip(v, g, strict=True)]
        w = [wi - att.lr * vi for wi, vi in zip(w, v, strict=True)]
    out = a @ a @ x @ w[0] @ w[1]
    loss = F.cross_entropy(out[~train], labels[~train])
    return torch.autograd.grad(loss, delta)[0]


@pytest.mark.parametrize("binary_features", [True, False])
def test_meta_gradient_equals_autograd_through_the_unrolled_training(binary_features):
    gen = torch.Generator().manual_seed(0)
    n, f, c = 30, 8, 3
    adj = (torch.rand(n, n, generator=gen) < 0.15).float().triu(1)
    adj = adj + adj.T
    x = torch.rand(n, f, generator=gen)
    if binary_features:
        x = (x < 0.03).float()  # mostly zeros: the CSR path
    labels = torch.randint(c, (n,), generator=gen)
    train = torch.zeros(n, dtype=torch.bool)
    train[:10] = True
    weights = [torch.randn(f, 16, generator=gen) * 0.3, torch.randn(16, c, generator=gen) * 0.3]
    att = Metattack(train_iters=6)
    operand = feature_operand(x)
    assert (operand.layout == torch.sparse_csr) == binary_features  # both paths are exercised
    ours = att.meta_gradient(adj, operand, labels, train, weights)
    ref = _reference_meta_gradient(att, adj, x, labels, train, weights)
    assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-7)


@pytest.fixture(scope="module")
def graph():
    return synthetic_graph(
        300,
        num_classes=3,
        avg_degree=5,
        feature_dim=12,
        feature_signal=0.2,  # weak features: the topology matters, as on citation graphs
        num_val=50,
        num_test=150,
        seed=4,
    )


@pytest.fixture(scope="module")
def surrogate(graph):
    torch.manual_seed(0)
    from edgeguard.engine.graph import fit_graph

    m = gcn(12, 3, 16)
    fit_graph(m, graph, CFG)
    return m.eval()


def test_flips_are_greedy_in_order_and_never_isolate_a_node(graph, surrogate):
    small = Metattack(6, train_iters=20)(surrogate, graph)
    large = Metattack(12, train_iters=20)(surrogate, graph)
    assert small.num_flips == 6 and large.num_flips == 12
    assert torch.equal(large.flips[:, :6], small.flips)  # the first k are the attack at budget k
    deg = torch.bincount(large.data.edge_index[0], minlength=graph.num_nodes)
    before = torch.bincount(graph.edge_index[0], minlength=graph.num_nodes)
    assert not ((before > 0) & (deg == 0)).any()
    assert (large.flips[0] < large.flips[1]).all()


def test_metattack_poisons_harder_than_dice(graph, surrogate):
    def make():
        return gcn(12, 3, 16)

    meta = poison(
        Metattack(0.1, train_iters=30, flips_per_step=4), make, graph, CFG, surrogate=surrogate
    )
    dice = poison(DICE(0.1), make, graph, CFG, surrogate=surrogate)
    assert meta.poisoned < dice.poisoned - 0.03
    assert meta.poisoned < meta.clean - 0.05


def test_reference_options_label_with_a_linear_gcn_and_redraw_the_start(graph, surrogate):
    from edgeguard.attacks.graph.metattack import feature_operand

    n = graph.num_nodes
    adj = torch.zeros(n, n)
    adj[graph.edge_index[0], graph.edge_index[1]] = 1
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(12, 16, generator=gen) * 0.3, torch.randn(16, 3, generator=gen) * 0.3]
    labels = Metattack._linear_labels(
        adj, feature_operand(graph.x), graph.y, graph.train_mask, weights
    )
    unl = ~graph.train_mask
    acc = float((labels == graph.y)[unl].float().mean())
    assert 0.5 < acc < 1.0, acc  # trained (chance is 1/3), and not handed the true labels
    base = Metattack(6, train_iters=20)(surrogate, graph)
    ref = Metattack(6, train_iters=20, self_training="linear", reinit=True)(surrogate, graph)
    assert ref.num_flips == 6 and not torch.equal(ref.flips, base.flips)


def test_bad_input_is_reported(graph, surrogate):
    with pytest.raises(GraphAttackError, match="global"):
        Metattack(2)(surrogate, graph, target=0)
    with pytest.raises(GraphAttackError, match="max_nodes"):
        Metattack(2, max_nodes=100)(surrogate, graph)
    unlabelled = graph.clone()
    unlabelled.train_mask = torch.zeros_like(graph.train_mask)
    with pytest.raises(GraphAttackError, match="labelled"):
        Metattack(2)(surrogate, unlabelled)
    for bad in (
        {"momentum": 1.0},
        {"lambda_": 2.0},
        {"lr": float("nan")},
        {"train_iters": 0},
        {"self_training": "oracle"},
    ):
        with pytest.raises(GraphAttackError):
            Metattack(**bad)
    assert isinstance(get_graph_attack("metattack", budget=3), Metattack)
