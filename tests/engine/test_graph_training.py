"""fit_graph's model selection: the best validation epoch's weights are kept (as published GCN
figures do), early stopping, and resume with the selection state."""

from pathlib import Path

import pytest
import torch

pytest.importorskip("torch_geometric")

from edgeguard.data.graphs import synthetic_graph
from edgeguard.engine import TrainConfig
from edgeguard.engine.graph import fit_graph, node_accuracy
from edgeguard.errors import ConfigError
from edgeguard.models import build


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    data = synthetic_graph(300, feature_dim=16, homophily=0.6, train_per_class=4, seed=seed)
    model = build("gcn", in_features=16, num_classes=5, hidden=32, dropout=0.5)
    # a high learning rate and no weight decay: validation accuracy peaks, then falls
    return (
        data,
        model,
        TrainConfig(epochs=60, lr=0.05, weight_decay=0.0, scheduler="none", seed=seed),
    )


def _best(history) -> int:
    """The selection rule by hand: highest val_acc, then lowest val_loss, then earliest."""
    rows = history.epochs
    return max(rows, key=lambda r: (r["val_acc"], -r["val_loss"], -r["epoch"]))["epoch"]


def test_the_best_validation_epoch_is_kept():
    data, model, cfg = _setup()
    history = fit_graph(model, data, cfg, log_every=10**9)
    assert history.best_epoch == _best(history)
    kept = history.epochs[history.best_epoch - 1]["val_acc"]
    assert node_accuracy(model, data, data.val_mask) == pytest.approx(kept)
    assert history.best_epoch < len(history.epochs)  # the setup does overfit: not the last epoch


def test_select_last_keeps_the_last_epoch():
    data, model, cfg = _setup()
    history = fit_graph(model, data, cfg, log_every=10**9, select="last")
    assert history.best_epoch is None
    assert node_accuracy(model, data, data.val_mask) == pytest.approx(history.last["val_acc"])


def test_loss_or_accuracy_keeps_the_last_record_of_either():
    # DeepRobust's GCN.fit: a new lowest validation loss or a new highest accuracy both take over
    data, model, cfg = _setup()
    history = fit_graph(model, data, cfg, log_every=10**9, select="loss-or-acc")
    best_loss, best_acc, want = float("inf"), -1.0, None
    for r in history.epochs:
        if r["val_loss"] < best_loss or r["val_acc"] > best_acc:
            want = r["epoch"]
        best_loss, best_acc = min(best_loss, r["val_loss"]), max(best_acc, r["val_acc"])
    assert history.best_epoch == want
    kept = history.epochs[want - 1]["val_acc"]
    assert node_accuracy(model, data, data.val_mask) == pytest.approx(kept)


def test_patience_stops_after_that_many_epochs_without_progress():
    data, model, cfg = _setup()
    history = fit_graph(model, data, cfg, log_every=10**9, patience=5)
    assert len(history.epochs) == history.best_epoch + 5 < cfg.epochs
    assert history.best_epoch == _best(history)


def test_resume_keeps_the_selection_bit_exactly(tmp_path: Path):
    data, full, cfg = _setup()
    fit_graph(full, data, cfg, checkpoint_dir=tmp_path / "a", log_every=5)
    data, cut, cfg = _setup()
    calls = []

    def killed_in_epoch_28(model, graph):  # an identity "inner step" that dies mid-run
        calls.append(1)
        if len(calls) == 28:
            raise KeyboardInterrupt("killed")
        return graph

    with pytest.raises(KeyboardInterrupt):
        fit_graph(cut, data, cfg, killed_in_epoch_28, checkpoint_dir=tmp_path / "b", log_every=5)
    torch.manual_seed(12345)  # the checkpoint restores the RNG, not the caller's state
    history = fit_graph(cut, data, cfg, checkpoint_dir=tmp_path / "b", resume=True, log_every=5)
    for k, v in full.state_dict().items():
        assert torch.equal(cut.state_dict()[k], v), k
    assert history.best_epoch == _best(history)


def test_bad_selection_settings_are_refused():
    data, model, cfg = _setup()
    with pytest.raises(ConfigError, match="select must be one of .'val', 'attacked-val', 'loss-or"):
        fit_graph(model, data, cfg, select="best")
    with pytest.raises(ConfigError, match="needs perturb"):
        fit_graph(model, data, cfg, select="attacked-val")
    with pytest.raises(ConfigError, match="patience must be an integer >= 1"):
        fit_graph(model, data, cfg, patience=0)
