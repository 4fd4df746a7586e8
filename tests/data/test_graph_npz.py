"""The gnn-meta-attack npz loader: the field's preprocessing on hand-made graphs and on the real
files (node and edge counts as DeepRobust / Pro-GNN report them), splits, pre-attacked adjacency,
bad files."""

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

pytest.importorskip("torch_geometric")

from edgeguard.data.errors import DatasetError
from edgeguard.data.graph_npz import npz_graph, save_adjacency, stratified_split
from edgeguard.data.graphs import load_graph


def _write(path: Path, adj, labels, attr=None) -> Path:
    adj = sp.csr_matrix(adj)
    arrays = {
        "adj_data": adj.data.astype(np.float32),
        "adj_indices": adj.indices,
        "adj_indptr": adj.indptr,
        "adj_shape": np.array(adj.shape),
        "labels": np.asarray(labels),
    }
    if attr is not None:
        a = sp.csr_matrix(attr)
        arrays |= {
            "attr_data": a.data,
            "attr_indices": a.indices,
            "attr_indptr": a.indptr,
            "attr_shape": np.array(a.shape),
        }
    np.savez(path, **arrays)
    return path


def _toy(tmp_path: Path, attr=True) -> Path:
    """Nodes 0-4 a component given by one-way, doubled and self-loop entries; 5-6 another."""
    a = np.zeros((7, 7))
    a[0, 1] = a[1, 2] = a[2, 3] = 1  # one direction only
    a[3, 4] = 2  # a weight to binarise
    a[2, 2] = 1  # a self-loop to drop
    a[5, 6] = a[6, 5] = 1
    feats = np.zeros((7, 3))
    feats[:, 0] = 3  # counts to binarise
    feats[1, 2] = 1
    return _write(tmp_path / "toy.npz", a, [0, 0, 1, 1, 1, 0, 1], feats if attr else None)


def test_preprocessing_matches_the_fields_on_a_hand_made_graph(tmp_path: Path):
    d = npz_graph(_toy(tmp_path), train=0.4, val=0.3, seed=0)
    assert d.num_nodes == 5 and d.num_removed == 2  # nodes 5, 6 are outside the largest component
    edges = {tuple(e) for e in d.edge_index.T.tolist()}
    want = {(0, 1), (1, 2), (2, 3), (3, 4)}
    assert edges == want | {(b, a) for a, b in want}  # symmetric, binary, no self-loop
    assert torch.equal(d.x[:, 0], torch.ones(5)) and d.x[1, 2] == 1 and d.x.max() == 1
    assert d.y.tolist() == [0, 0, 1, 1, 1]
    full = npz_graph(_toy(tmp_path), train=0.4, val=0.3, largest_component=False)
    assert full.num_nodes == 7 and full.num_removed == 0


def test_no_attributes_give_identity_features(tmp_path: Path):
    d = npz_graph(_toy(tmp_path, attr=False), train=0.4, val=0.3)
    assert torch.equal(d.x, torch.eye(5))


def test_stratified_split_is_per_class_and_seeded():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    tr, va, te = stratified_split(labels, 0.1, 0.1, seed=3)
    assert not (tr & va).any() and not (tr & te).any() and not (va & te).any()
    assert (tr | va | te).all()
    assert [int((labels[tr] == c).sum()) for c in range(3)] == [5, 3, 2]
    assert [int((labels[va] == c).sum()) for c in range(3)] == [5, 3, 2]
    again = stratified_split(labels, 0.1, 0.1, seed=3)
    other = stratified_split(labels, 0.1, 0.1, seed=4)
    assert torch.equal(again[0], tr) and not torch.equal(other[0], tr)
    with pytest.raises(DatasetError, match="train \\+ val < 1"):
        stratified_split(labels, 0.6, 0.5)


def test_a_pre_attacked_adjacency_replaces_the_clean_one(tmp_path: Path):
    path = _toy(tmp_path)
    attacked = np.zeros((5, 5))
    attacked[0, 4] = attacked[4, 0] = attacked[1, 3] = 1
    sp.save_npz(tmp_path / "attacked.npz", sp.csr_matrix(attacked))  # SciPy's own layout
    d = npz_graph(path, adjacency=tmp_path / "attacked.npz", train=0.4, val=0.3)
    assert {tuple(e) for e in d.edge_index.T.tolist()} == {(0, 4), (4, 0), (1, 3), (3, 1)}
    _write(tmp_path / "wrong.npz", np.zeros((7, 7)), [0] * 7)  # the graph before the component
    with pytest.raises(DatasetError, match="does not fit the 5 nodes"):
        npz_graph(path, adjacency=tmp_path / "wrong.npz", train=0.4, val=0.3)


def test_a_saved_adjacency_is_scipys_layout_and_loads_back(tmp_path: Path):
    """save_adjacency writes what SciPy's own load_npz reads, and npz_graph takes it back."""
    from edgeguard.attacks.graph import flip_pairs

    path = _toy(tmp_path)
    d = npz_graph(path, train=0.4, val=0.3)
    poisoned = flip_pairs(d, torch.tensor([[0, 1], [4, 2]]))  # add 0-4, remove 1-2
    save_adjacency(poisoned, tmp_path / "poisoned.npz")
    adj = sp.load_npz(tmp_path / "poisoned.npz").toarray()
    assert (adj == adj.T).all() and set(zip(*adj.nonzero(), strict=True)) == {
        tuple(e) for e in poisoned.edge_index.T.tolist()
    }
    again = npz_graph(path, adjacency=tmp_path / "poisoned.npz", train=0.4, val=0.3)
    assert {tuple(e) for e in again.edge_index.T.tolist()} == {
        tuple(e) for e in poisoned.edge_index.T.tolist()
    }


def test_bad_files_are_refused_with_the_expected_layout(tmp_path: Path):
    with pytest.raises(DatasetError, match="not found"):
        npz_graph(tmp_path / "none.npz")
    np.savez(
        tmp_path / "nolabels.npz",
        adj_data=np.ones(1),
        adj_indices=[1],
        adj_indptr=[0, 1, 1],
        adj_shape=[2, 2],
    )
    with pytest.raises(DatasetError, match="missing labels"):
        npz_graph(tmp_path / "nolabels.npz")
    np.savez(tmp_path / "noadj.npz", labels=[0, 1])
    with pytest.raises(DatasetError, match="missing adj_data.*gnn-meta-attack npz layout"):
        npz_graph(tmp_path / "noadj.npz")
    np.savez(
        tmp_path / "far.npz",
        adj_data=np.ones(1),
        adj_indices=[7],
        adj_indptr=[0, 1, 1],
        adj_shape=[2, 2],
        labels=[0, 1],
    )
    with pytest.raises(DatasetError, match="indices outside"):
        npz_graph(tmp_path / "far.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="not a readable .npz"):
        npz_graph(tmp_path / "junk.npz")


@pytest.mark.parametrize(
    ("name", "nodes", "edges", "features"),
    [("cora", 2485, 5069, 1433), ("citeseer", 2110, 3668, 3703), ("polblogs", 1222, 16714, 1222)],
)
def test_the_real_graphs_have_the_fields_sizes(shared_data, name, nodes, edges, features):
    """Largest-component sizes as DeepRobust's Dataset(setting="nettack") and Pro-GNN report."""
    d = load_graph(str(shared_data("graphs") / f"{name}.npz"), seed=15)
    assert (d.num_nodes, d.edge_index.shape[1] // 2, d.x.shape[1]) == (nodes, edges, features)
    assert abs(int(d.train_mask.sum()) - round(0.1 * nodes)) <= 7  # per-class rounding


@pytest.mark.parametrize(
    ("name", "sizes", "first_train"),
    [
        ("cora", (247, 249, 1988), [4, 19, 29, 39, 43]),
        ("citeseer", (210, 211, 1688), [15, 24, 31, 32, 38]),
        ("polblogs", (121, 123, 978), [8, 9, 13, 25, 40]),
    ],
)
def test_the_deeprobust_split_gives_deeprobusts_nodes(shared_data, name, sizes, first_train):
    """Sizes and first training nodes of ``get_train_val_test(N, 0.1, 0.8, stratify=labels,
    seed=15)`` as DeepRobust 0.2.11 itself returns them (all three index sets were compared in
    full once, by importing its utils module beside ours)."""
    d = npz_graph(shared_data("graphs") / f"{name}.npz", seed=15, split="deeprobust")
    masks = (d.train_mask, d.val_mask, d.test_mask)
    assert tuple(int(m.sum()) for m in masks) == sizes
    assert d.train_mask.nonzero().flatten()[:5].tolist() == first_train
    # disjoint; DeepRobust's float shares leave one node of Cora and CiteSeer in no set
    assert int(sum(m.long() for m in masks).max()) == 1
    with pytest.raises(DatasetError, match="split must be one of"):
        npz_graph(shared_data("graphs") / f"{name}.npz", split="random")
