import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeguard.data import digits
from edgeguard.engine import TrainConfig
from edgeguard.masks import mask_of
from edgeguard.prune import get_pruner, run_pruning
from edgeguard.prune.reconstruct import obs_saliency, reconstruct, unfold_input
from edgeguard.sparsity import SparsityError, get_masks, get_scheme
from edgeguard.sparsity.model import attach_masks


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(6, 4, 3, padding=1),
        nn.Conv2d(6, 4, (3, 2), stride=2, dilation=(1, 2), padding=(2, 1)),
        nn.Conv2d(6, 4, 3, padding="same", padding_mode="reflect", groups=2),
        nn.Conv2d(6, 4, 4, padding="same", dilation=1),
        nn.Conv1d(6, 4, 3, stride=2, padding=1),
        nn.Conv3d(6, 4, (2, 3, 3), padding=(0, 1, 1), stride=(1, 2, 1)),
    ],
)
def test_unfolded_patches_times_weights_equal_the_conv(conv):
    torch.manual_seed(0)
    x = torch.randn(2, 6, *[7] * (conv.weight.dim() - 2))
    cols = unfold_input(conv, x)  # [g, S, K]
    g = conv.groups
    w = conv.weight.reshape(g, conv.out_channels // g, -1)
    y = (cols @ w.transpose(1, 2)).transpose(0, 1)  # [S, g, F/g] -> positions x filters
    ref = conv(x) - conv.bias.view(1, -1, *[1] * (x.dim() - 2))
    ref = ref.movedim(1, -1).reshape(-1, conv.out_channels)
    torch.testing.assert_close(y.reshape(-1, conv.out_channels), ref, atol=1e-5, rtol=1e-5)


def _lstsq_layer(conv, mask, x, target):
    """Reference: per filter, numpy-style least squares of ``target`` ([S, F]) on the kept patch
    entries of ``x`` and a constant (the bias)."""
    cols = unfold_input(conv, x)[0]
    f_out = conv.out_channels
    w, b = torch.zeros(f_out, cols.shape[1], dtype=x.dtype), torch.zeros(f_out, dtype=x.dtype)
    for f in range(f_out):
        k = mask[f].flatten()
        a = torch.cat([cols[:, k], torch.ones(len(cols), 1, dtype=x.dtype)], 1)
        sol = torch.linalg.lstsq(a, target[:, f : f + 1]).solution.squeeze(1)
        w[f, k], b[f] = sol[:-1], sol[-1]
    return w.reshape(conv.weight.shape), b


def _outputs(conv, x):
    return conv(x).movedim(1, -1).reshape(-1, conv.out_channels)


def test_reconstruction_is_the_least_squares_fit_to_the_dense_outputs():
    # two pruned layers: the first fits its dense outputs on the same inputs, the second its dense
    # outputs from the inputs the re-solved first layer now gives it (damp 0, every position)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(5, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3)).double()
    x = torch.randn(6, 5, 9, 9, dtype=torch.float64)
    scheme = get_scheme("kgs", gm=4, gn=1)
    masks = {n: scheme.mask(model[int(n)].weight, 0.5) for n in ("0", "2")}
    dense = copy.deepcopy(model)
    with torch.no_grad():
        w0, b0 = _lstsq_layer(dense[0], masks["0"], x, _outputs(dense[0], x))
        mid = (F.conv2d(x, w0, b0, padding=1)).relu()
        w2, b2 = _lstsq_layer(dense[2], masks["2"], mid, _outputs(dense[2], dense[1](dense[0](x))))
    report = reconstruct(model, masks, [(x[:3],), (x[3:],)], damp=0.0, max_positions=10**6)
    for i, (w, b) in (("0", (w0, b0)), ("2", (w2, b2))):
        torch.testing.assert_close(model[int(i)].weight.detach(), w, atol=1e-8, rtol=1e-8)
        torch.testing.assert_close(model[int(i)].bias.detach(), b, atol=1e-8, rtol=1e-8)
        assert torch.equal(mask_of(model[int(i)]), masks[i])
        before, after = report[i]
        assert 0 <= after < before


def test_reconstruction_lowers_the_output_error_of_a_pruned_network():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 8, 1),
    ).eval()
    # correlated input channels: what the kept weights can take over
    base = torch.randn(8, 1, 12, 12)
    xs = [
        (base[i : i + 2].repeat(1, 3, 1, 1) + 0.3 * torch.randn(2, 3, 12, 12),)
        for i in (0, 2, 4, 6)
    ]
    with torch.no_grad():
        ref = [model(*x) for x in xs]
    scheme = get_scheme("kgs", gm=4, gn=1)
    masks = {n: scheme.mask(model[int(n)].weight, 0.5) for n in ("2", "4")}
    masked, rebuilt = copy.deepcopy(model), copy.deepcopy(model)
    attach_masks(masked, masks)
    report = reconstruct(rebuilt, masks, xs)
    assert list(report) == ["2", "4"]  # the order they run in

    def err(m):
        with torch.no_grad():
            return sum(float((m(*x) - r).square().sum()) for x, r in zip(xs, ref, strict=True))

    assert err(rebuilt) < 0.7 * err(masked)
    for n, mask in masks.items():
        assert not (rebuilt[int(n)].weight.detach()[~mask]).any()


def test_reconstruction_says_what_is_wrong():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    x = [(torch.randn(1, 3, 5, 5),)]
    with pytest.raises(SparsityError, match="not a conv or linear"):
        reconstruct(model, {"1": torch.ones(4, 3, 3, 3, dtype=torch.bool)}, x)
    with pytest.raises(SparsityError, match="mask of '0' is"):
        reconstruct(model, {"0": torch.ones(4, 3, 3, dtype=torch.bool)}, x)
    with pytest.raises(SparsityError, match="at least one"):
        reconstruct(model, {"0": torch.ones(4, 3, 3, 3, dtype=torch.bool)}, [])
    unused = nn.ModuleDict({"a": nn.Conv2d(3, 4, 1), "b": nn.Conv2d(3, 4, 1)})
    unused.forward = lambda x: unused["a"](x)  # "b" never runs
    with pytest.raises(SparsityError, match="do not run"):
        reconstruct(unused, {"b": torch.ones(4, 3, 1, 1, dtype=torch.bool)}, x)


def test_refit_layers_keep_every_weight_and_take_no_mask():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    xs = [(torch.randn(2, 3, 10, 10),) for _ in range(3)]
    with torch.no_grad():
        ref = [model(*x) for x in xs]
    masks = {"0": get_scheme("kgs", gm=4, gn=1).mask(model[0].weight, 0.6)}
    only, refit = copy.deepcopy(model), copy.deepcopy(model)
    reconstruct(only, masks, xs)
    report = reconstruct(refit, masks, xs, refit=["2"])
    assert list(report) == ["0", "2"] and mask_of(refit[2]) is None
    assert refit[2].weight.detach().count_nonzero() == refit[2].weight.numel()

    def err(m):
        with torch.no_grad():
            return sum(float((m(*x) - r).square().sum()) for x, r in zip(xs, ref, strict=True))

    assert err(refit) < err(only)


def test_refitting_a_layer_whose_input_did_not_change_keeps_its_bias_on_large_inputs():
    # CenterNet's stem reads 0-255 pixels: damping scaled by those inputs once shrank its bias
    # about 100-fold although nothing upstream had changed
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        model[0].bias.fill_(20.0)
    xs = [(torch.rand(2, 3, 12, 12) * 255,) for _ in range(3)]
    masks = {"2": get_scheme("kgs", gm=4, gn=1).mask(model[2].weight, 0.5)}
    refit = copy.deepcopy(model)
    report = reconstruct(refit, masks, xs, refit=["0"])
    assert report["0"][1] <= report["0"][0] + 1e-12 and report["0"][1] < 1e-6
    assert torch.allclose(refit[0].bias, model[0].bias, rtol=1e-3)
    for before, after in report.values():
        assert after <= before  # never worse than the weights as they were


def test_run_pruning_with_reconstruction_keeps_more_accuracy(digits_model):
    # the same masks (magnitude KGS) hard-pruned with and without re-solved weights
    train = digits(True)
    calib = [(train[i][0][None],) for i in range(256)]
    cfg = TrainConfig(epochs=1, batch_size=64, lr=1e-9, progress=False)

    def prune(inputs, reselect):
        return run_pruning(
            copy.deepcopy(digits_model),
            get_pruner("magnitude", "kgs"),
            train,
            digits(False),
            (1, 1, 8, 8),
            rates=0.7,
            finetune=cfg,
            reconstruct_inputs=inputs,
            reselect=reselect,
        )

    masked, rebuilt, chosen = prune(None, False), prune(calib, False), prune(calib, True)
    for n, m in get_masks(masked.model).items():
        assert torch.equal(get_masks(rebuilt.model)[n], m)
        assert int(get_masks(chosen.model)[n].sum()) == int(m.sum())  # as many kept, others
    assert chosen.rates == masked.rates
    assert rebuilt.accuracy_pruned > masked.accuracy_pruned + 0.02
    assert chosen.accuracy_pruned > masked.accuracy_pruned + 0.02
    with pytest.raises(SparsityError, match="give reconstruct_inputs"):
        prune(None, True)


def test_a_refitted_depthwise_conv_is_each_channels_least_squares_fit():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, groups=4)
    ).double()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    masks = {"0": get_scheme("kgs", gm=2, gn=1).mask(model[0].weight, 0.5)}
    dense = copy.deepcopy(model)
    reconstruct(model, masks, [(x,)], damp=0.0, refit=["2"], max_positions=10**6)
    with torch.no_grad():
        mid = model[1](model[0](x))  # what the refitted conv now reads
        target = _outputs(dense[2], dense[1](dense[0](x)))
    cols = unfold_input(model[2], mid)  # [4 groups, S, 9]
    for c in range(4):
        a = torch.cat([cols[c], torch.ones(len(cols[c]), 1, dtype=x.dtype)], 1)
        sol = torch.linalg.lstsq(a, target[:, c : c + 1]).solution.squeeze(1)
        torch.testing.assert_close(model[2].weight.detach()[c].flatten(), sol[:-1])
        torch.testing.assert_close(model[2].bias.detach()[c], sol[-1])


def test_a_layer_called_twice_is_fitted_on_both_calls():
    # conv(a) + conv(b): both calls' inputs enter the fit (least squares over both halves)
    torch.manual_seed(0)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 6, 3, padding=1)

        def forward(self, x):
            return torch.cat([self.conv(x[:, :4]), self.conv(x[:, 4:] * 3)], 1)

    model = Twice().double()
    x = torch.randn(3, 8, 7, 7, dtype=torch.float64)
    mask = get_scheme("kgs", gm=2, gn=1).mask(model.conv.weight, 0.5)
    dense = copy.deepcopy(model.conv)
    reconstruct(model, {"conv": mask}, [(x,)], damp=0.0, max_positions=10**6)
    both = torch.cat([x[:, :4], x[:, 4:] * 3])
    w, b = _lstsq_layer(dense, mask, both, _outputs(dense, both))
    torch.testing.assert_close(model.conv.weight.detach(), w)
    torch.testing.assert_close(model.conv.bias.detach(), b)


def test_obs_saliency_is_the_error_of_removing_one_weight_with_the_rest_re_solved():
    # hand-checkable reference: for each weight j, least squares of the filter's own outputs on
    # every other input column (and a free bias): its residual mean square is w_j^2 / [H^-1]_jj
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 2, 2).double()
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64) * torch.tensor([1.0, 10.0, 0.1]).view(
        1, 3, 1, 1
    )  # input scales that differ by 100x, as in a folded MobileNet
    cols = unfold_input(conv, x)[0]
    cols1 = torch.cat([cols, torch.ones(len(cols), 1, dtype=x.dtype)], 1)
    h = (cols1.T @ cols1 / len(cols))[None]
    sal = obs_saliency(conv.weight, h, damp=0.0)
    y = cols @ conv.weight.detach().reshape(2, -1).T  # bias-free outputs
    for f in range(2):
        for j in range(cols.shape[1]):
            a = torch.cat([cols1[:, :j], cols1[:, j + 1 :]], 1)
            res = y[:, f : f + 1] - a @ torch.linalg.lstsq(a, y[:, f : f + 1]).solution
            torch.testing.assert_close(
                sal.reshape(2, -1)[f, j], res.square().mean(), rtol=1e-6, atol=1e-12
            )


def test_select_keeps_the_unit_count_and_prefers_units_on_quiet_inputs():
    # two input channels, one 30x louder: magnitude removes the small weights on the loud channel,
    # the OBS re-selection removes the larger weights on the quiet one, with a smaller output error
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 8, 1, bias=False).eval()
    with torch.no_grad():
        conv.weight[:, 0] = 0.1 + 0.01 * torch.rand(8, 1, 1)  # loud channel, small weights
        conv.weight[:, 1] = 1.0 + 0.1 * torch.rand(8, 1, 1)  # quiet channel, large weights
    xs = [(torch.randn(2, 2, 6, 6) * torch.tensor([30.0, 1.0]).view(1, 2, 1, 1),) for _ in range(3)]
    scheme = get_scheme("column")
    mask = scheme.mask(conv.weight, 0.5)
    assert not mask[:, 0].any()  # magnitude: the loud channel goes
    by_magnitude, by_obs = copy.deepcopy(conv), copy.deepcopy(conv)
    err_mag = reconstruct(by_magnitude, {"": mask}, xs)[""][1]
    err_obs = reconstruct(by_obs, {"": mask}, xs, select=scheme)[""][1]
    chosen = mask_of(by_obs)
    assert int(chosen.sum()) == int(mask.sum())
    assert chosen[:, 0].all() and not chosen[:, 1].any()
    assert err_obs < 0.1 * err_mag
    with pytest.raises(SparsityError, match="partly kept"):
        reconstruct(copy.deepcopy(conv), {"": torch.rand(8, 2, 1, 1) > 0.5}, xs, select=scheme)
