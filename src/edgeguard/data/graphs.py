"""Graphs for node classification, as PyTorch Geometric ``Data`` (``x [N, F]``, ``edge_index [2, E]``
holding both directions of every undirected edge, ``y [N]``, boolean ``train_mask``/``val_mask``/
``test_mask``): Planetoid (Cora, CiteSeer, PubMed) and OGB node-property folders read from local disk,
and a generator of large graphs with community structure and informative features."""

from __future__ import annotations

import gzip
import logging
import pickle
from pathlib import Path

import numpy as np
import torch

from .errors import DatasetError
from .safe_pickle import PLANETOID_GLOBALS, CSRState, restricted_load

log = logging.getLogger(__name__)

PLANETOID_NAMES = {"cora": "Cora", "citeseer": "CiteSeer", "pubmed": "PubMed"}
PLANETOID_LAYOUT = """expected Planetoid layout (the raw files of kimiyoung/planetoid):
  ROOT/<Name>/raw/ind.<name>.{x,tx,allx,y,ty,ally,graph,test.index}   (Name: Cora, CiteSeer, PubMed)"""


def planetoid(root: str | Path, name: str) -> torch_geometric.data.Data:  # noqa: F821
    """Cora / CiteSeer / PubMed with the standard split (20 labels per class, 500 val, 1000 test).

    Reads ``root/<Name>/raw/ind.<name>.*`` itself, with a restricted unpickler (NumPy arrays and inert
    stand-ins for SciPy's CSR matrix and ``defaultdict`` only), and writes nothing anywhere: PyG's
    ``Planetoid`` unpickles these files without restriction and trusts a ``processed/`` folder it
    finds beside them, so a planted file would run code.  The result equals PyG's processing
    (CiteSeer's isolated test nodes get zero features and label 0, self-loops and duplicate edges are
    dropped).  Nothing is downloaded: missing files are an error."""
    from torch_geometric.data import Data
    from torch_geometric.utils import coalesce, remove_self_loops

    key = name.lower()
    if key not in PLANETOID_NAMES:
        raise DatasetError(
            f"unknown Planetoid graph {name!r}; choose from {', '.join(PLANETOID_NAMES)}"
        )
    raw = Path(root) / PLANETOID_NAMES[key] / "raw"
    parts = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")
    files = {s: raw / f"ind.{key}.{s}" for s in parts}
    missing = [f.name for f in files.values() if not f.is_file()]
    if missing:
        raise DatasetError(f"missing {', '.join(missing)} in {raw}\n{PLANETOID_LAYOUT}")
    arrays = {s: _planetoid_matrix(files[s]) for s in ("x", "tx", "allx", "y", "ty", "ally")}
    graph = restricted_load(files["graph"], PLANETOID_GLOBALS)
    try:
        test_index = np.loadtxt(files["test.index"], dtype=np.int64, ndmin=1)
    except ValueError as err:
        raise DatasetError(
            f"{files['test.index']}: expected one node index per line ({err})"
        ) from None
    x, tx, allx = (torch.from_numpy(arrays[s]) for s in ("x", "tx", "allx"))
    y, ty, ally = (torch.from_numpy(arrays[s]) for s in ("y", "ty", "ally"))
    test_index = torch.from_numpy(test_index)
    if not (
        isinstance(graph, dict)
        and len(test_index) == len(tx) == len(ty)
        and len(x) == len(y)
        and len(allx) == len(ally)
    ):
        raise DatasetError(f"{raw}: the Planetoid files do not fit together\n{PLANETOID_LAYOUT}")
    sorted_test = test_index.sort().values
    if key == "citeseer":  # isolated test nodes: indices are not consecutive, fill them with zeros
        span = int(test_index.max() - test_index.min()) + 1
        tx_ext, ty_ext = tx.new_zeros(span, tx.shape[1]), ty.new_zeros(span, ty.shape[1])
        tx_ext[sorted_test - test_index.min()] = tx
        ty_ext[sorted_test - test_index.min()] = ty
        tx, ty = tx_ext, ty_ext
    feats = torch.cat([allx, tx])
    labels = torch.cat([ally, ty]).argmax(1)
    n = feats.shape[0]
    if int(test_index.min()) < 0 or int(test_index.max()) >= n:
        raise DatasetError(f"{files['test.index']}: node indices outside [0, {n})")
    feats[test_index] = feats[sorted_test].clone()
    labels[test_index] = labels[sorted_test].clone()
    rows, cols = [], []
    for node, neighbours in graph.items():
        if not (
            isinstance(node, int)
            and isinstance(neighbours, list)
            and all(isinstance(v, int) for v in neighbours)
        ):
            raise DatasetError(f"{files['graph']}: expected node -> list of neighbour indices")
        rows += [node] * len(neighbours)
        cols += neighbours
    edge_index = torch.tensor([rows, cols], dtype=torch.long)
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= n):
        raise DatasetError(f"{files['graph']}: neighbour indices outside [0, {n})")
    edge_index, _ = remove_self_loops(edge_index)
    edge_index = coalesce(edge_index, num_nodes=n, sort_by_row=False)

    def mask(index: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n, dtype=torch.bool).index_fill_(0, index, True)

    n_train = len(y)
    return Data(
        x=feats,
        edge_index=edge_index,
        y=labels,
        train_mask=mask(torch.arange(n_train)),
        val_mask=mask(torch.arange(n_train, n_train + 500)),
        test_mask=mask(test_index),
    )


def _planetoid_matrix(path: Path) -> np.ndarray:
    """A Planetoid feature or one-hot label file as a dense float32 ``[rows, cols]`` array."""
    obj = restricted_load(path, PLANETOID_GLOBALS)
    try:
        arr = obj.to_dense() if isinstance(obj, CSRState) else np.asarray(obj, dtype=np.float32)
    except (pickle.UnpicklingError, ValueError, TypeError) as err:
        raise DatasetError(f"refusing to read {path}: {err}") from None
    if arr.ndim != 2:
        raise DatasetError(f"{path}: expected a 2-D matrix, got shape {arr.shape}")
    return arr


OGB_LAYOUT = """expected OGB node-property layout (as the ogb package downloads it):
  ROOT/ogbn_<name>/raw/{edge.csv.gz, node-feat.csv.gz, node-label.csv.gz}
  ROOT/ogbn_<name>/split/<scheme>/{train,valid,test}.csv.gz   (arxiv: time, products: sales_ranking)"""


def _csv(path: Path, dtype) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"missing {path}\n{OGB_LAYOUT}")
    with gzip.open(path, "rt") as fh:
        return np.loadtxt(fh, delimiter=",", dtype=dtype, ndmin=2)


def ogb_node(root: str | Path, name: str) -> torch_geometric.data.Data:  # noqa: F821
    """An OGB node-property graph (``arxiv``, ``products``, ...) from its local folder, made
    undirected and without self-loops (ogbn-arxiv is a directed citation graph)."""
    from torch_geometric.data import Data
    from torch_geometric.utils import coalesce, remove_self_loops, to_undirected

    short = name.removeprefix("ogbn-").removeprefix("ogbn_")
    base = Path(root) / f"ogbn_{short}"
    if not base.is_dir():
        raise DatasetError(f"OGB folder not found: {base}\n{OGB_LAYOUT}")
    edges = torch.from_numpy(_csv(base / "raw" / "edge.csv.gz", np.int64).T.copy())
    x = torch.from_numpy(_csv(base / "raw" / "node-feat.csv.gz", np.float32))
    y = torch.from_numpy(_csv(base / "raw" / "node-label.csv.gz", np.int64)[:, 0].copy())
    n = x.shape[0]
    edges, _ = remove_self_loops(edges)
    edges = coalesce(to_undirected(edges, num_nodes=n), num_nodes=n)
    splits = (
        [d for d in (base / "split").glob("*") if d.is_dir()] if (base / "split").is_dir() else []
    )
    if not splits:
        raise DatasetError(f"no split folder under {base / 'split'}\n{OGB_LAYOUT}")
    masks = {}
    for part, key in (("train", "train_mask"), ("valid", "val_mask"), ("test", "test_mask")):
        idx = torch.from_numpy(_csv(splits[0] / f"{part}.csv.gz", np.int64)[:, 0].copy())
        masks[key] = torch.zeros(n, dtype=torch.bool).index_fill_(0, idx, True)
    return Data(x=x, edge_index=edges, y=y, **masks)


def synthetic_graph(
    num_nodes: int,
    num_classes: int = 5,
    avg_degree: float = 8.0,
    homophily: float = 0.8,
    feature_dim: int = 32,
    feature_signal: float = 0.25,
    train_per_class: int = 20,
    num_val: int | None = None,
    num_test: int | None = None,
    seed: int = 0,
) -> torch_geometric.data.Data:  # noqa: F821
    """A random graph with communities (one per class) and noisy class-dependent features.

    Each of the ``num_nodes * avg_degree / 2`` edges starts at a uniform node and ends, with
    probability ``homophily``, at a uniform node of the same class, else at any uniform node
    (self-loops and duplicates dropped).  Features are the class centroid (``feature_signal`` times a
    standard normal vector per class) plus standard normal noise: informative, but not enough alone,
    so that the graph matters.  Splits: ``train_per_class`` labelled nodes per class, then
    ``num_val`` and ``num_test`` nodes (Planetoid-style; default ``min(500, N/10)`` and
    ``min(1000, N/5)``).  1,000 to 10,000,000 nodes: vectorised,
    about 2 s and 0.5 GB per million nodes at degree 8."""
    from torch_geometric.data import Data

    if not 10 <= num_nodes <= 50_000_000:
        raise DatasetError(f"num_nodes must be in [10, 5e7], got {num_nodes}")
    if not 0 <= homophily <= 1:
        raise DatasetError(f"homophily must be in [0, 1], got {homophily}")
    num_val = min(500, num_nodes // 10) if num_val is None else num_val
    num_test = min(1000, num_nodes // 5) if num_test is None else num_test
    need = num_classes * train_per_class + num_val + num_test
    if need > num_nodes:
        raise DatasetError(f"the splits need {need} nodes but the graph has {num_nodes}")
    g = torch.Generator().manual_seed(seed)
    n = num_nodes
    y = torch.randint(num_classes, (n,), generator=g)
    order = torch.argsort(y)
    counts = torch.bincount(y, minlength=num_classes)
    start = torch.cumsum(counts, 0) - counts
    m = int(n * avg_degree / 2)
    src = torch.randint(n, (m,), generator=g)
    same = torch.rand(m, generator=g) < homophily
    pick = (torch.rand(m, generator=g) * counts[y[src]]).long()
    dst = torch.where(same, order[start[y[src]] + pick], torch.randint(n, (m,), generator=g))
    lo, hi = torch.minimum(src, dst), torch.maximum(src, dst)
    keys = torch.unique(lo[lo != hi] * n + hi[lo != hi])
    lo, hi = keys // n, keys % n
    edge_index = torch.stack([torch.cat([lo, hi]), torch.cat([hi, lo])])
    centroids = feature_signal * torch.randn(num_classes, feature_dim, generator=g)
    x = centroids[y] + torch.randn(n, feature_dim, generator=g)
    perm = torch.randperm(n, generator=g)
    train = torch.zeros(n, dtype=torch.bool)
    for c in range(num_classes):
        train[perm[y[perm] == c][:train_per_class]] = True
    rest = perm[~train[perm]]
    val = torch.zeros(n, dtype=torch.bool).index_fill_(0, rest[:num_val], True)
    test = torch.zeros(n, dtype=torch.bool).index_fill_(0, rest[num_val : num_val + num_test], True)
    return Data(x=x, edge_index=edge_index, y=y, train_mask=train, val_mask=val, test_mask=test)


def load_graph(spec: str, root: str | Path | None = None, seed: int = 0, **options):
    """A graph by name: ``cora``, ``citeseer``, ``pubmed`` (Planetoid, from ``root``),
    ``synthetic:N`` (``synthetic_graph(N)``), ``ogb:NAME`` (``ogb_node(root, NAME)``), or a
    gnn-meta-attack ``PATH.npz`` (:func:`~.graph_npz.npz_graph`: largest component, stratified
    split with ``seed``; options ``adjacency``, ``train``, ``val``; a relative path not found as
    given is looked up in ``root``)."""
    if spec.startswith("synthetic:"):
        try:
            n = int(float(spec.split(":", 1)[1]))
        except ValueError:
            raise DatasetError(
                f"synthetic graphs are 'synthetic:N' with N nodes, got {spec!r}"
            ) from None
        return synthetic_graph(n, seed=seed, **options)
    if spec.endswith(".npz"):
        from .graph_npz import npz_graph

        path = Path(spec)
        if not path.is_file() and root is not None and (Path(root) / spec).is_file():
            path = Path(root) / spec
        return npz_graph(path, seed=seed, **options)
    if root is None:
        raise DatasetError(f"graph {spec!r} is read from a local folder: pass root=/data/path")
    if spec.startswith("ogb:"):
        return ogb_node(root, spec.split(":", 1)[1])
    if spec.lower() in PLANETOID_NAMES:
        return planetoid(root, spec)
    raise DatasetError(
        f"unknown graph {spec!r}; use cora, citeseer, pubmed, synthetic:N, ogb:NAME or a "
        "gnn-meta-attack PATH.npz"
    )
