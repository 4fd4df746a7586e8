"""Property and reference tests for the sparsity schemes."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeguard.sparsity import SparsityError, available_schemes, get_scheme

SCHEMES = [
    ("filter", {}),
    ("channel", {}),
    ("column", {}),
    ("vanilla", {"gm": 3, "gn": 2}),
    ("kgs", {"gm": 3, "gn": 2}),
    ("vanilla", {}),
    ("kgs", {}),
]

shapes = st.one_of(
    st.tuples(st.integers(1, 9), st.integers(1, 9)),  # Linear
    st.tuples(st.integers(1, 9), st.integers(1, 7), st.integers(1, 3)),  # Conv1d
    st.tuples(st.integers(1, 9), st.integers(1, 7), st.integers(1, 3), st.integers(1, 3)),
    st.tuples(*(st.integers(1, 5),) * 2, *(st.integers(1, 3),) * 3),  # Conv3d
)


def reference_unit(name: str, opts: dict, f: int, c: int, loc: int, n_c: int, k: int) -> tuple:
    """Hand-written unit identity of weight (f, c, loc), independent of the implementation."""
    gm, gn = opts.get("gm", 8), opts.get("gn", 4)
    return {
        "filter": (f,),
        "channel": (c,),
        "column": (c, loc),
        "vanilla": (f // gm, c // gn),
        "kgs": (f // gm, c // gn, loc),
    }[name]


@pytest.mark.parametrize(("name", "opts"), SCHEMES)
@settings(max_examples=40, deadline=None)
@given(shape=shapes, rate=st.floats(0, 0.999), seed=st.integers(0, 2**16))
def test_mask_properties(name, opts, shape, rate, seed):
    scheme = get_scheme(name, **opts)
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    lay = scheme.layout(shape)
    mask = scheme.mask(w, rate)
    assert mask.shape == w.shape and mask.dtype == torch.bool
    # exactly round(rate * U) units removed, whole units only
    keep = scheme.units_of_mask(mask)
    assert int((~keep).sum()) == round(rate * lay.num_units)
    # the removed units are the smallest by L2 norm per weight
    norms = scheme.unit_sq_norms(w) / lay.sizes
    if keep.any() and (~keep).any():
        assert norms[~keep].max() <= norms[keep].min() + 1e-6
    # idempotent under re-projection at the same rate
    projected = scheme.project(w, rate)
    assert torch.equal(scheme.mask(projected, rate), mask)
    assert torch.equal(scheme.project(projected, rate), projected)


@pytest.mark.parametrize(("name", "opts"), SCHEMES)
def test_units_match_hand_written_reference(name, opts):
    shape = (10, 7, 3, 3)
    scheme = get_scheme(name, **opts)
    index = scheme.layout(shape).unit_index().reshape(10, 7, 9)
    ids: dict[tuple, int] = {}
    for f in range(10):
        for c in range(7):
            for loc in range(9):
                ref = reference_unit(name, opts, f, c, loc, 7, 9)
                ids.setdefault(ref, int(index[f, c, loc]))
                assert ids[ref] == int(index[f, c, loc]), "two reference units share an index"
    assert len(set(ids.values())) == len(ids) == scheme.num_units(shape)


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 20), st.integers(1, 12), st.integers(1, 3), st.integers(1, 3)),
    gm=st.integers(1, 9),
    gn=st.integers(1, 6),
    rate=st.floats(0, 0.999),
)
def test_kgs_keeps_same_locations_in_every_kernel_of_a_group(shape, gm, gn, rate):
    scheme = get_scheme("kgs", gm=gm, gn=gn)
    w = torch.randn(shape)
    mask = scheme.mask(w, rate).reshape(shape[0], shape[1], -1)
    for f0 in range(0, shape[0], gm):
        for c0 in range(0, shape[1], gn):
            block = mask[f0 : f0 + gm, c0 : c0 + gn]  # partial groups at the edges included
            assert (block == block[:1, :1]).all()
    n_units = math.ceil(shape[0] / gm) * math.ceil(shape[1] / gn) * shape[2] * shape[3]
    assert scheme.num_units(shape) == n_units


def test_partial_groups_are_units_of_their_own():
    # 10 filters with gm=8 -> groups of 8 and 2; 3 channels with gn=4 -> one group of 3.
    scheme = get_scheme("vanilla", gm=8, gn=4)
    lay = scheme.layout((10, 3, 3, 3, 3))
    assert lay.num_units == 2
    assert lay.sizes.tolist() == [8 * 3 * 27, 2 * 3 * 27]
    w = torch.ones(10, 3, 3, 3, 3)
    w[8:] = 5.0  # the small partial group has the larger norm
    mask = scheme.mask(w, 0.5)
    assert mask[8:].all() and not mask[:8].any()


def test_partial_groups_are_ranked_by_norm_per_weight_not_removed_first():
    """KGS 5x3 on 16 filters x 9 channels: the last filter group holds 1 filter, 1/5 of a full
    unit.  Every weight is set to its unit's score, so the removal order must follow the scores
    whatever the unit sizes (raw L2 norms would remove the 1-filter units first)."""
    scheme = get_scheme("kgs", gm=5, gn=3)
    layout = scheme.layout((16, 9, 3, 3))
    score = torch.randperm(layout.num_units, generator=torch.Generator().manual_seed(0)) + 1.0
    weight = layout.expand(score)
    assert torch.equal(scheme.removal_order(weight), torch.argsort(score))
    keep = scheme.mask(torch.randn(16, 9, 3, 3, generator=torch.Generator().manual_seed(1)), 0.6)
    assert keep[15].any()  # the remainder filter is not removed entirely at rate 0.6


def test_mask_kept_units_hand_example():
    w = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 0.0]])  # Linear 3 x 2
    assert get_scheme("filter").mask(w, 1 / 3).tolist() == [[False] * 2, [True] * 2, [True] * 2]
    assert get_scheme("channel").mask(w, 0.5).tolist() == [[False, True]] * 3  # norms sqrt5 < 3


def test_unit_norms_are_differentiable():
    w = torch.randn(6, 4, 3, requires_grad=True)
    get_scheme("kgs", gm=2, gn=2).unit_sq_norms(w).sum().backward()
    assert torch.allclose(w.grad, 2 * w)


def test_registry_lists_all_schemes():
    assert available_schemes() == ["channel", "column", "filter", "kgs", "vanilla"]


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan"), float("inf"), "0.5", True, None])
def test_bad_rates_are_rejected(rate):
    with pytest.raises(SparsityError, match=r"\[0, 1\)"):
        get_scheme("filter").mask(torch.randn(4, 4), rate)


def test_bad_scheme_names_and_options():
    with pytest.raises(SparsityError, match=r"unknown sparsity scheme 'kgz'.*available: channel"):
        get_scheme("kgz")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(SparsityError, match=">= 1"):
            get_scheme("kgs", gm=bad)
    with pytest.raises(SparsityError, match="takes no setting"):
        get_scheme("filter", gm=4)


def test_nan_and_bad_weights_are_rejected():
    w = torch.randn(4, 4)
    w[0, 0] = float("nan")
    with pytest.raises(SparsityError, match="NaN"):
        get_scheme("kgs").mask(w, 0.5)
    with pytest.raises(SparsityError, match="floating point"):
        get_scheme("kgs").mask(torch.ones(4, 4, dtype=torch.int64), 0.5)
    with pytest.raises(SparsityError, match=r"\[F, C, \*kernel\]"):
        get_scheme("kgs").mask(torch.randn(4), 0.5)


def test_split_unit_mask_is_detected():
    scheme = get_scheme("filter")
    mask = torch.ones(4, 3, dtype=torch.bool)
    mask[0, 0] = False
    assert not scheme.is_structured(mask)
    with pytest.raises(SparsityError, match="partly kept"):
        scheme.units_of_mask(mask)
