"""Graph loaders: Planetoid from the shared folder, OGB layout, the synthetic generator."""

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeguard.attacks.graph import check_graph
from edgeguard.data import DatasetError
from edgeguard.data.graphs import load_graph, ogb_node, planetoid, synthetic_graph

PLANETOID = Path("../shared/data/planetoid")


@pytest.mark.skipif(not PLANETOID.is_dir(), reason="../shared/data/planetoid is not present")
@pytest.mark.parametrize(
    ("name", "nodes", "edges"), [("cora", 2708, 5278), ("citeseer", 3327, 4552)]
)
def test_planetoid_standard_split(tmp_path, name, nodes, edges):
    proper = {"cora": "Cora", "citeseer": "CiteSeer"}[name]
    shutil.copytree(PLANETOID / proper, tmp_path / proper)
    data = planetoid(tmp_path, name)
    assert data.num_nodes == nodes and int(data.train_mask.sum()) in (120, 140)
    assert int(data.val_mask.sum()) == 500 and int(data.test_mask.sum()) == 1000
    # PyG's CiteSeer has isolated nodes and the README counts undirected edges without them
    assert abs(data.edge_index.shape[1] // 2 - edges) <= 60
    check_graph(data)


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
