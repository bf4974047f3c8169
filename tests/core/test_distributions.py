import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_transfer.core import compute_masks, erk_densities, nm_mask, validate_sparsity
from sparse_transfer.core.distributions import num_zeros

shape_2d = st.tuples(st.integers(1, 24), st.integers(1, 24))
sparsities = st.floats(0.0, 0.99, allow_nan=False)


def _scores(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    return {f"l{i}.weight": torch.rand(shape, generator=g) for i, shape in enumerate(shapes)}


@settings(max_examples=40, deadline=None)
@given(st.lists(shape_2d, min_size=1, max_size=5), sparsities, st.integers(0, 10_000))
def test_global_keeps_exactly_the_k_largest(shapes, sparsity, seed):
    scores = _scores(shapes, seed)
    masks = compute_masks(scores, sparsity, "global")
    flat_scores = torch.cat([s.flatten() for s in scores.values()])
    flat_masks = torch.cat([masks[n].flatten() for n in scores])
    k = flat_scores.numel() - num_zeros(flat_scores.numel(), sparsity)
    assert int(flat_masks.sum()) == k
    if 0 < k < flat_scores.numel():  # every kept score >= every pruned score (scores are distinct a.s.)
        assert flat_scores[flat_masks].min() > flat_scores[~flat_masks].max()


@settings(max_examples=40, deadline=None)
@given(st.lists(shape_2d, min_size=1, max_size=5), sparsities, st.integers(0, 10_000))
def test_uniform_prunes_each_layer_at_the_target(shapes, sparsity, seed):
    scores = _scores(shapes, seed)
    masks = compute_masks(scores, sparsity, "uniform")
    for name, s in scores.items():
        kept = masks[name]
        assert int(kept.sum()) == s.numel() - num_zeros(s.numel(), sparsity)
        if kept.any() and not kept.all():
            assert s[kept].min() > s[~kept].max()


conv_or_linear = st.one_of(shape_2d, st.tuples(st.integers(1, 16), st.integers(1, 16), st.sampled_from([1, 3]), st.sampled_from([1, 3])))


@settings(max_examples=60, deadline=None)
@given(st.lists(conv_or_linear, min_size=1, max_size=6), st.floats(0.05, 0.98), st.integers(0, 10_000))
def test_erk_meets_the_budget_within_one_weight_per_layer(shapes, sparsity, seed):
    scores = _scores(shapes, seed)
    densities = erk_densities({n: s.shape for n, s in scores.items()}, sparsity)
    assert all(0.0 <= d <= 1.0 + 1e-12 for d in densities.values())
    masks = compute_masks(scores, sparsity, "erk")
    total = sum(s.numel() for s in scores.values())
    kept = sum(int(m.sum()) for m in masks.values())
    target = (1 - sparsity) * total
    assert abs(kept - target) <= len(scores)  # rounding: at most one weight per layer


def test_erk_gives_small_layers_more_density_and_makes_over_full_layers_dense():
    shapes = {"big": (512, 512), "small": (4, 8), "mid": (64, 64)}
    densities = erk_densities(shapes, 0.9)
    assert densities["small"] == 1.0
    assert densities["big"] < densities["mid"] < 1.0
    total = sum(math.prod(s) for s in shapes.values())
    kept = sum(densities[n] * math.prod(s) for n, s in shapes.items())
    assert kept == pytest.approx(0.1 * total)


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from([(2, 4), (4, 8), (1, 4)]),
    st.integers(1, 6),
    st.integers(1, 4),
    st.sampled_from([None, (3, 3), (1, 1)]),
    st.integers(0, 10_000),
)
def test_nm_holds_in_every_group(nm, out_features, in_groups, kernel, seed):
    n, m = nm
    shape = (out_features, in_groups * m) + (kernel or ())
    scores = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    mask = nm_mask(scores, n, m)
    assert mask.shape == scores.shape
    groups = mask.movedim(1, -1).reshape(-1, m)
    assert (groups.sum(dim=1) == n).all()
    # inside each group, the kept scores are the largest ones
    score_groups = scores.movedim(1, -1).reshape(-1, m)
    kept_min = torch.where(groups, score_groups, torch.inf).min(dim=1).values
    pruned_max = torch.where(~groups, score_groups, -torch.inf).max(dim=1).values
    assert (kept_min > pruned_max).all()


def test_nm_needs_divisible_input_dimension():
    with pytest.raises(ValueError, match=r"has 6 inputs, which is not divisible by M=4"):
        compute_masks({"fc.weight": torch.rand(3, 6)}, distribution="nm", n=2, m=4)


def test_nm_rejects_conflicting_sparsity():
    with pytest.raises(ValueError, match="conflicting"):
        compute_masks({"fc.weight": torch.rand(3, 8)}, 0.9, "nm", n=2, m=4)


def test_random_is_exact_per_layer_and_seeded():
    shapes = {"a": torch.rand(10, 10), "b": torch.rand(7, 3)}
    one = compute_masks(shapes, 0.7, "random", generator=torch.Generator().manual_seed(1))
    two = compute_masks(shapes, 0.7, "random", generator=torch.Generator().manual_seed(1))
    for name, s in shapes.items():
        assert int(one[name].sum()) == s.numel() - num_zeros(s.numel(), 0.7)
        assert torch.equal(one[name], two[name])


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_sparsity_out_of_range_is_an_error(bad):
    with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
        compute_masks({"w": torch.rand(4, 4)}, bad, "global")


@pytest.mark.parametrize("bad", ["0.9", None, True])
def test_sparsity_of_wrong_type_is_an_error(bad):
    with pytest.raises(TypeError):
        validate_sparsity(bad)


def test_unknown_distribution_is_an_error():
    with pytest.raises(ValueError, match="Unknown sparsity distribution 'layerwise'"):
        compute_masks({"w": torch.rand(4, 4)}, 0.5, "layerwise")
