"""Graphs in the gnn-meta-attack npz format: the data of Nettack, Metattack, DeepRobust and Pro-GNN.

An ``.npz`` holds a SciPy CSR adjacency (``adj_data``, ``adj_indices``, ``adj_indptr``,
``adj_shape``), optional CSR node attributes (``attr_*``; Polblogs has none) and ``labels``.  It is
read with ``allow_pickle=False`` (the files' object arrays of node names are never touched) and
preprocessed as the field does (DeepRobust's ``Dataset(setting="nettack")``): symmetrise, binarise,
drop self-loops, keep the largest connected component, binarise attributes, identity features where
there are none; then a stratified train / validation / test split drawn with a seed (10 / 10 / 80 %
by default, as Pro-GNN).  A pre-attacked adjacency over the same (largest-component) nodes replaces
the clean one for poisoning and evasion studies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import DatasetError

NPZ_LAYOUT = (
    "expected the gnn-meta-attack npz layout: adj_data, adj_indices, adj_indptr, adj_shape (CSR "
    "adjacency), labels [N], optional attr_data, attr_indices, attr_indptr, attr_shape"
)


def _csr(z, prefix: str, path: Path):
    """The CSR matrix stored under ``prefix`` (``"adj_"``, ``"attr_"`` or ``""`` for SciPy's
    ``save_npz`` layout: data, indices, indptr, shape)."""
    import scipy.sparse as sp

    try:
        parts = [z[prefix + k] for k in ("data", "indices", "indptr", "shape")]
    except KeyError as err:
        raise DatasetError(f"{path}: missing {err.args[0]}; {NPZ_LAYOUT}") from None
    except ValueError:  # an object array: refused with allow_pickle=False
        raise DatasetError(f"{path}: {prefix}* holds Python objects; {NPZ_LAYOUT}") from None
    data, indices, indptr, shape = parts
    shape = tuple(int(v) for v in shape)
    if len(shape) != 2 or len(indptr) != shape[0] + 1 or len(indices) != len(data):
        raise DatasetError(f"{path}: {prefix or 'the'} CSR arrays do not fit the shape {shape}")
    if len(indices) and (indices.min() < 0 or indices.max() >= shape[1]):
        raise DatasetError(f"{path}: {prefix or ''}indices outside [0, {shape[1]})")
    if not np.isfinite(data).all():
        raise DatasetError(f"{path}: {prefix or ''}data holds NaN or Inf")
    try:
        return sp.csr_matrix((data, indices, indptr), shape=shape)
    except ValueError as err:
        raise DatasetError(f"{path}: not a valid CSR matrix ({err})") from None


def _load(path: Path):
    if not path.is_file():
        raise DatasetError(f"graph file {path} not found")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path} is not a readable .npz file ({err}); {NPZ_LAYOUT}") from None


def _symmetric_binary(adj):
    adj = ((adj + adj.T) != 0).astype(np.float32).tocsr()
    adj.setdiag(0)
    adj.eliminate_zeros()
    return adj


def _check_shares(train: float, val: float) -> None:
    if not (0 < train < 1 and 0 < val < 1 and train + val < 1):
        raise DatasetError(
            f"split shares must be in (0, 1) with train + val < 1, got {train}, {val}"
        )


def stratified_split(
    labels: torch.Tensor, train: float = 0.1, val: float = 0.1, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boolean ``[N]`` train / validation / test masks: in every class, ``round(train * n_c)`` and
    ``round(val * n_c)`` nodes (at least 1 each) drawn with ``seed``, the rest test."""
    _check_shares(train, val)
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    masks = [torch.zeros(n, dtype=torch.bool) for _ in range(3)]
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        a = max(1, round(train * len(idx)))
        b = a + max(1, round(val * len(idx)))
        masks[0][idx[:a]] = True
        masks[1][idx[a:b]] = True
        masks[2][idx[b:]] = True
    return masks[0], masks[1], masks[2]


def deeprobust_split(
    labels: torch.Tensor, train: float = 0.1, val: float = 0.1, seed: int = 15
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The split DeepRobust and Pro-GNN publish their figures on (``get_train_val_test``): two
    scikit-learn stratified ``train_test_split`` calls on one NumPy ``RandomState(seed)``, the test
    share first, then train against validation.  Returns boolean ``[N]`` masks."""
    from sklearn.model_selection import train_test_split

    _check_shares(train, val)
    n = len(labels)
    y = labels.numpy()
    rng = np.random.RandomState(seed)
    test = 1 - train - val
    share = 1 - val - test  # the float expressions DeepRobust evaluates, for the same counts
    idx_tv, idx_test = train_test_split(
        np.arange(n), random_state=rng, train_size=share + val, test_size=test, stratify=y
    )
    idx_train, idx_val = train_test_split(
        idx_tv,
        random_state=rng,
        train_size=share / (share + val),
        test_size=val / (share + val),
        stratify=y[idx_tv],
    )
    masks = []
    for idx in (idx_train, idx_val, idx_test):
        m = torch.zeros(n, dtype=torch.bool)
        m[torch.from_numpy(idx)] = True
        masks.append(m)
    return masks[0], masks[1], masks[2]


SPLITS = {"stratified": stratified_split, "deeprobust": deeprobust_split}


def npz_graph(
    path: str | Path,
    adjacency: str | Path | None = None,
    train: float = 0.1,
    val: float = 0.1,
    seed: int = 0,
    largest_component: bool = True,
    split: str = "stratified",
) -> torch_geometric.data.Data:  # noqa: F821
    """A graph from a gnn-meta-attack ``.npz`` as PyG ``Data`` (see the module docstring).

    Args:
        path: the ``.npz`` (``adj_*``, ``labels``, optional ``attr_*``).
        adjacency: a pre-attacked adjacency over the preprocessed nodes: the same npz layout
            (``adj_*``) or SciPy's ``save_npz`` layout (``data``, ``indices``, ``indptr``,
            ``shape``), shape ``[N, N]`` with N the largest component's node count.
        train, val: shares of each class for training and validation; the rest is the test set.
        seed: the split's seed.
        largest_component: keep only the largest connected component (the field's setting).
        split: ``"stratified"`` (:func:`stratified_split`: per class, our own draw) or
            ``"deeprobust"`` (:func:`deeprobust_split`: the exact nodes of DeepRobust / Pro-GNN
            for the same seed; their figures use seed 15).
    Returns ``Data`` with ``x [N, F]`` float (identity ``[N, N]`` without attributes),
    ``edge_index [2, E]`` (both directions), ``y [N]``, boolean masks, and ``num_removed``: nodes
    outside the largest component.
    """
    from scipy.sparse.csgraph import connected_components
    from torch_geometric.data import Data

    if split not in SPLITS:
        raise DatasetError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    path = Path(path)
    z = _load(path)
    adj = _csr(z, "adj_", path)
    if adj.shape[0] != adj.shape[1]:
        raise DatasetError(f"{path}: the adjacency must be square, got {adj.shape}")
    n = adj.shape[0]
    try:
        labels = np.asarray(z["labels"])
    except KeyError:
        raise DatasetError(f"{path}: missing labels; {NPZ_LAYOUT}") from None
    except ValueError:  # an object array: refused with allow_pickle=False
        raise DatasetError(f"{path}: labels hold Python objects; {NPZ_LAYOUT}") from None
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise DatasetError(f"{path}: labels must be {n} non-negative integers, got {labels.shape}")
    attr = _csr(z, "attr_", path) if "attr_data" in z.files else None
    if attr is not None and attr.shape[0] != n:
        raise DatasetError(f"{path}: {attr.shape[0]} attribute rows for {n} nodes")
    adj = _symmetric_binary(adj)
    keep = np.arange(n)
    if largest_component:
        _, comp = connected_components(adj, directed=False)
        keep = np.flatnonzero(comp == np.bincount(comp).argmax())
        adj = adj[keep][:, keep]
    if adjacency is not None:
        apath = Path(adjacency)
        az = _load(apath)
        attacked = _csr(az, "adj_" if "adj_data" in az.files else "", apath)
        if attacked.shape != adj.shape:
            raise DatasetError(
                f"{apath}: adjacency {attacked.shape} does not fit the {len(keep)} nodes of "
                f"{path.name}'s {'largest component' if largest_component else 'graph'}"
            )
        adj = _symmetric_binary(attacked)
    if attr is None:
        x = torch.eye(len(keep))
    else:
        x = torch.from_numpy((attr[keep] != 0).toarray().astype(np.float32))
    coo = adj.tocoo()
    edge_index = torch.from_numpy(np.stack([coo.row, coo.col]).astype(np.int64))
    y = torch.from_numpy(labels[keep].astype(np.int64))
    tr, va, te = SPLITS[split](y, train, val, seed)
    return Data(
        x=x,
        edge_index=edge_index,
        y=y,
        train_mask=tr,
        val_mask=va,
        test_mask=te,
        num_removed=n - len(keep),
    )


def save_adjacency(data, path: str | Path) -> Path:
    """Write the undirected adjacency of ``data`` (``edge_index``, ``num_nodes``) in SciPy's
    ``save_npz`` CSR layout, atomically: the ``adjacency=`` file of :func:`npz_graph` (e.g. a
    poisoned graph, to train on later with ``--adjacency``)."""
    import scipy.sparse as sp

    from ..engine.atomic import atomic_path

    n = data.num_nodes
    i, j = data.edge_index.numpy()
    adj = sp.csr_matrix((np.ones(len(i), dtype=np.float32), (i, j)), shape=(n, n))
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        sp.save_npz(fh, adj, compressed=True)
    return path
