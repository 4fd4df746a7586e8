"""Graph loaders: Planetoid from the shared folder, OGB layout, the synthetic generator."""

import gzip
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeguard.attacks.graph import check_graph
from edgeguard.data import DatasetError
from edgeguard.data.graphs import load_graph, ogb_node, planetoid, synthetic_graph


@pytest.mark.parametrize(
    ("name", "nodes", "edges"), [("cora", 2708, 5278), ("citeseer", 3327, 4552)]
)
def test_planetoid_standard_split(shared_data, name, nodes, edges):
    data = planetoid(shared_data("planetoid"), name)  # read in place: nothing is written
    assert data.num_nodes == nodes and int(data.train_mask.sum()) in (120, 140)
    assert int(data.val_mask.sum()) == 500 and int(data.test_mask.sum()) == 1000
    # PyG's CiteSeer has isolated nodes and the README counts undirected edges without them
    assert abs(data.edge_index.shape[1] // 2 - edges) <= 60
    check_graph(data)


@pytest.mark.parametrize("name", ["Cora", "CiteSeer"])
def test_planetoid_equals_pyg_processing(shared_data, tmp_path, name):
    """The restricted reader gives exactly what PyG's (unrestricted) Planetoid gives, on a copy."""
    from torch_geometric.datasets import Planetoid

    shutil.copytree(shared_data("planetoid") / name, tmp_path / name)
    ref = Planetoid(str(tmp_path), name)[0]
    ours = planetoid(shared_data("planetoid"), name)
    for key in ("x", "edge_index", "y", "train_mask", "val_mask", "test_mask"):
        assert torch.equal(getattr(ours, key), getattr(ref, key)), key


class _Planted:
    """Pickles to a call that creates ``sentinel`` when unpickled (what an attacker would plant)."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (Path.touch, (self.sentinel,))


def _copy_cora(shared_data, tmp_path: Path) -> Path:
    root = tmp_path / "graphs"
    shutil.copytree(shared_data("planetoid") / "Cora", root / "Cora")
    return root


@pytest.mark.parametrize("part", ["x", "allx", "graph"])
def test_planetoid_planted_raw_pickle_is_refused_and_never_runs(shared_data, tmp_path, part):
    root = _copy_cora(shared_data, tmp_path)
    sentinel = tmp_path / "pwned"
    (root / "Cora/raw" / f"ind.cora.{part}").write_bytes(pickle.dumps(_Planted(sentinel)))
    with pytest.raises(DatasetError, match=r"refusing to read .*ind\.cora\." + part):
        planetoid(root, "cora")
    assert not sentinel.exists()


@pytest.mark.parametrize("planted", ["pre_transform.pt", "pre_filter.pt", "data.pt"])
def test_planetoid_ignores_a_planted_processed_folder(shared_data, tmp_path, planted):
    """PyG trusts ``processed/*.pt`` (weights_only=False); edgeguard never reads or writes it."""
    root = _copy_cora(shared_data, tmp_path)
    sentinel = tmp_path / "pwned"
    (root / "Cora/processed").mkdir()
    torch.save(_Planted(sentinel), root / "Cora/processed" / planted)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    data = planetoid(root, "cora")
    assert data.num_nodes == 2708 and not sentinel.exists()
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing written


def test_cli_gnn_refuses_a_planted_graph_folder(shared_data, tmp_path, capsys):
    from edgeguard.cli import main

    root = _copy_cora(shared_data, tmp_path)
    sentinel = tmp_path / "pwned"
    (root / "Cora/raw/ind.cora.tx").write_bytes(pickle.dumps(_Planted(sentinel)))
    code = main(
        [
            "gnn",
            "attack",
            "--dataset",
            "cora",
            "--data-root",
            str(root),
            "--epochs",
            "2",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "refusing to read" in err and "Path.touch" in err
    assert not sentinel.exists()


def test_planetoid_missing_files_are_named(tmp_path):
    with pytest.raises(DatasetError, match="missing ind.cora.x"):
        planetoid(tmp_path, "cora")
    with pytest.raises(DatasetError, match="unknown Planetoid graph"):
        planetoid(tmp_path, "reddit")


def test_synthetic_graph_is_undirected_homophilous_and_split():
    data = synthetic_graph(5000, num_classes=5, avg_degree=8, homophily=0.8, seed=3)
    check_graph(data)
    src, dst = data.edge_index
    same = float((data.y[src] == data.y[dst]).float().mean())
    assert 0.75 < same < 0.9  # homophily 0.8 plus chance agreement of the random ends
    assert abs(data.edge_index.shape[1] / 5000 - 8) < 0.5
    assert int(data.train_mask.sum()) == 100 and int(data.test_mask.sum()) == 1000
    assert not (data.train_mask & data.test_mask).any()
    with pytest.raises(DatasetError, match="the splits need"):
        synthetic_graph(100, num_test=90)
    with pytest.raises(DatasetError, match="synthetic:N"):
        load_graph("synthetic:many")


def _gz(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as fh:
        np.savetxt(fh, np.asarray(rows), delimiter=",", fmt="%g")


def test_ogb_layout_is_read_and_made_undirected(tmp_path):
    base = tmp_path / "ogbn_tiny"
    _gz(base / "raw" / "edge.csv.gz", [[0, 1], [1, 2], [2, 2], [3, 0]])
    _gz(base / "raw" / "node-feat.csv.gz", np.eye(4))
    _gz(base / "raw" / "node-label.csv.gz", [[0], [1], [0], [1]])
    for part, idx in (("train", [0, 1]), ("valid", [2]), ("test", [3])):
        _gz(base / "split" / "time" / f"{part}.csv.gz", [[i] for i in idx])
    data = ogb_node(tmp_path, "ogbn-tiny")
    check_graph(data)  # the self-loop was dropped, edges mirrored
    assert data.edge_index.shape[1] == 6 and data.test_mask.tolist() == [False, False, False, True]
    assert torch.equal(load_graph("ogb:tiny", root=tmp_path).y, data.y)
    with pytest.raises(DatasetError, match="OGB folder not found"):
        ogb_node(tmp_path, "arxiv")
