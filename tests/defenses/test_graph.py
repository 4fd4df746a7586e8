"""Min-max robust training of a GCN: inner maximisation each epoch, timing, resume."""

import pytest
import torch

from edgeguard.attacks.graph import GraphAttackError, GreedyTopology, RandomFlips
from edgeguard.data.graphs import synthetic_graph
from edgeguard.defenses.graph import robust_train
from edgeguard.engine import TrainConfig, load_checkpoint
from edgeguard.engine.graph import node_accuracy
from edgeguard.models.graph import gcn


def test_robust_training_runs_the_inner_attack_each_epoch_and_resumes(tmp_path):
    data = synthetic_graph(
        500, num_classes=4, avg_degree=6, feature_dim=16, num_val=100, num_test=200, seed=2
    )
    cfg = TrainConfig(epochs=30, lr=0.01, weight_decay=5e-4, scheduler="none")
    torch.manual_seed(0)
    model = gcn(data.num_features, 4, hidden=16)
    before = data.edge_index.clone()
    hist = robust_train(
        model, data, GreedyTopology(0.05, rounds=2), cfg, checkpoint_dir=tmp_path, log_every=10
    )
    assert torch.equal(data.edge_index, before)
    assert len(hist.epochs) == 30 and all(e["attack_seconds"] > 0 for e in hist.epochs)
    assert node_accuracy(model, data) > 0.5
    # resume: a finished run returns at once with its history
    again = gcn(data.num_features, 4, hidden=16)
    hist2 = robust_train(
        again, data, GreedyTopology(0.05, rounds=2), cfg, checkpoint_dir=tmp_path, resume=True
    )
    assert len(hist2.epochs) == 30
    assert torch.equal(again.convs[0].lin.weight, model.convs[0].lin.weight)


def test_robust_training_against_two_attacks_logs_weights_and_resumes_them(tmp_path):
    data = synthetic_graph(
        300, num_classes=3, avg_degree=6, feature_dim=8, num_val=50, num_test=100, seed=4
    )
    cfg = TrainConfig(epochs=6, lr=0.01, weight_decay=5e-4, scheduler="none")
    attacks = [GreedyTopology(0.05, rounds=1), RandomFlips(0.05)]
    torch.manual_seed(0)
    hist = robust_train(gcn(8, 3, 16), data, attacks, cfg, checkpoint_dir=tmp_path, log_every=3)
    for e in hist.epochs:
        assert len(e["attack_losses"]) == 2 and sum(e["weights"]) == pytest.approx(1, abs=1e-3)
    # GTA's graph is the harder one: its weight grows
    assert hist.epochs[-1]["weights"][0] > 0.5
    state = load_checkpoint(tmp_path / "last.pt")
    assert torch.allclose(
        state["combine"]["weights"], torch.tensor(hist.epochs[-1]["weights"]), atol=1e-4
    )
    avg = robust_train(gcn(8, 3, 16), data, attacks, cfg, weighting="average")
    assert avg.epochs[-1]["weights"] == [0.5, 0.5]
    with pytest.raises(GraphAttackError, match="graph attacks"):
        robust_train(gcn(8, 3, 16), data, [], cfg)
