import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeguard.data import digits
from edgeguard.engine import TrainConfig
from edgeguard.masks import mask_of
from edgeguard.prune import get_pruner, run_pruning
from edgeguard.prune.reconstruct import reconstruct, unfold_input
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


def test_run_pruning_with_reconstruction_keeps_more_accuracy(digits_model):
    # the same masks (magnitude KGS) hard-pruned with and without re-solved weights
    train = digits(True)
    calib = [(train[i][0][None],) for i in range(256)]
    cfg = TrainConfig(epochs=1, batch_size=64, lr=1e-9, progress=False)
    out = {}
    for label, inputs in (("masked", None), ("reconstructed", calib)):
        out[label] = run_pruning(
            copy.deepcopy(digits_model),
            get_pruner("magnitude", "kgs"),
            train,
            digits(False),
            (1, 1, 8, 8),
            rates=0.7,
            finetune=cfg,
            reconstruct_inputs=inputs,
        )
    masked, rebuilt = out["masked"], out["reconstructed"]
    for n, m in get_masks(masked.model).items():
        assert torch.equal(get_masks(rebuilt.model)[n], m)
    assert rebuilt.accuracy_pruned > masked.accuracy_pruned + 0.02


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
