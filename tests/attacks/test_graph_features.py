"""Feature-flip attack and poisoning on a graph with binary (bag-of-words-like) features."""

import pytest
import torch

from edgeguard.attacks.graph import (
    GraphAttackError,
    GreedyTopology,
    PGDFeatures,
    get_graph_attack,
    poison,
)
from edgeguard.data.graphs import synthetic_graph
from edgeguard.engine import TrainConfig
from edgeguard.engine.graph import fit_graph, node_accuracy
from edgeguard.models.graph import gcn

CFG = TrainConfig(epochs=100, lr=0.01, weight_decay=5e-4, scheduler="none", progress=False)


@pytest.fixture(scope="module")
def binary_graph():
    """The synthetic community graph with its features thresholded to 0/1 (sparse, informative)."""
    data = synthetic_graph(
        500,
        num_classes=4,
        avg_degree=6,
        feature_dim=24,
        feature_signal=1.0,
        num_val=100,
        num_test=250,
        seed=3,
    )
    data.x = (data.x > 1.0).float()
    return data


@pytest.fixture(scope="module")
def model(binary_graph):
    torch.manual_seed(0)
    m = gcn(binary_graph.num_features, 4, hidden=16)
    fit_graph(m, binary_graph, CFG)
    return m.eval()


def random_feature_flips(data, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(data.x.numel(), generator=g)[:k]
    out = data.clone()
    out.x = data.x.clone().flatten()
    out.x[idx] = 1 - out.x[idx]
    out.x = out.x.view_as(data.x)
    return out


def test_feature_flips_stay_in_budget_and_beat_random_flips(binary_graph, model):
    x0 = binary_graph.x.clone()
    res = PGDFeatures(0.1, steps=50)(model, binary_graph)
    assert torch.equal(binary_graph.x, x0)  # caller's features untouched
    assert res.budget == round(0.1 * int(x0.sum()))
    assert 0 < res.num_flips <= res.budget
    changed = (res.data.x != x0).nonzero().T
    assert torch.equal(changed, res.flips[:, torch.argsort(res.flips[0] * 10**6 + res.flips[1])])
    assert ((res.data.x == 0) | (res.data.x == 1)).all()
    assert torch.equal(res.data.edge_index, binary_graph.edge_index)
    clean = node_accuracy(model, binary_graph)
    attacked = node_accuracy(model, res.data)
    rand = node_accuracy(model, random_feature_flips(binary_graph, res.num_flips))
    assert attacked < rand - 0.05 and attacked < clean - 0.1, (clean, attacked, rand)


def test_targeted_feature_attack_changes_only_the_targets_row(binary_graph, model):
    res = get_graph_attack("pgd-features", budget=5, steps=30)(model, binary_graph, target=7)
    assert res.num_flips <= 5 and (res.flips[0] == 7).all()


def test_feature_attack_rejects_non_binary_features(binary_graph, model):
    data = binary_graph.clone()
    data.x = data.x * 0.5
    with pytest.raises(GraphAttackError, match="binary"):
        PGDFeatures(0.05)(model, data)
    with pytest.raises(GraphAttackError, match="budget"):
        PGDFeatures(1.5)


def _poison(attack, graph, **options):
    """``poison`` with a 16-unit GCN victim, the module's training recipe and seed 0."""
    return poison(attack, lambda: gcn(graph.num_features, 4, 16), graph, CFG, seed=0, **options)


def test_poisoning_retrains_on_the_perturbed_graph(binary_graph):
    res = _poison(GreedyTopology(0.1, rounds=5), binary_graph)
    assert res.attack.num_flips <= res.attack.budget
    assert res.evasion < res.clean  # the surrogate is hurt by its own perturbation
    assert res.poisoned == node_accuracy(res.model, res.attack.data)
    # same seed and recipe as the surrogate: the victim differs only because its graph did
    again = _poison(GreedyTopology(1, rounds=1), binary_graph)
    w = [r.model.convs[0].lin.weight for r in (res, again)]
    assert not torch.allclose(*w)
    assert res.poisoned < again.poisoned


def test_a_given_surrogate_is_attacked_without_training_it_again(binary_graph):
    first = _poison(GreedyTopology(0.05, rounds=2), binary_graph)
    before = {k: v.clone() for k, v in first.surrogate.state_dict().items()}
    again = _poison(GreedyTopology(0.05, rounds=2), binary_graph, surrogate=first.surrogate)
    assert again.surrogate is first.surrogate
    assert all(torch.equal(v, first.surrogate.state_dict()[k]) for k, v in before.items())
    # the same surrogate, attack and seed: the same outcome as training it afresh
    assert (again.clean, again.evasion, again.poisoned) == (
        first.clean,
        first.evasion,
        first.poisoned,
    )
