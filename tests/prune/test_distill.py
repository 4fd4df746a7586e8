"""Label-free distillation of pruned detectors: the CenterNet and NanoDet losses against a direct
formula, fit's loss_fn contract, and prune_detector end to end (regularise-free magnitude pruning,
distillation fine-tuning, AP scores, resume) on a small CenterNet-shaped detector."""

import copy
import math

import pytest
import torch
from torch import fx, nn

from edgeguard.data import UnlabeledImages
from edgeguard.data.persons import PersonPhoto, PersonPhotos
from edgeguard.engine import TrainConfig, fit
from edgeguard.errors import ConfigError
from edgeguard.masks import masks_of
from edgeguard.models.detectors import centernet as cn
from edgeguard.models.detectors.base import (
    PersonDetector,
    binary_kl_sum,
    side_iou,
    size_balance,
)
from edgeguard.models.detectors.nanodet import BINS, NanoDetDetector
from edgeguard.prune import (
    DetectorDistillation,
    detector_ap,
    detector_layers,
    head_convs,
    prune_detector,
    with_net,
)
from edgeguard.sparsity import SparsityError


def _binary_kl(s, t):
    return sum(
        b * math.log(b / a) + (1 - b) * math.log((1 - b) / (1 - a))
        for a, b in zip(s.flatten().tolist(), t.flatten().tolist(), strict=True)
    )


def test_centernet_loss_is_the_binary_kl_over_the_heat_mass_plus_weighted_box_l1():
    g = torch.Generator().manual_seed(0)
    heat_t, heat_s = (torch.rand(1, 3, 2, 5, generator=g) * 0.9 + 0.05 for _ in range(2))
    wh_t, wh_s = (torch.rand(1, 3, 2, 4, generator=g) * 20 for _ in range(2))
    got = cn.CenterNetDetector.distillation_loss((heat_s, wh_s), (heat_t, wh_t))
    w = heat_t.amax(-1, keepdim=True)
    box = float(((wh_s - wh_t).abs() * w).sum() / (4 * w.sum()))
    want = _binary_kl(heat_s, heat_t) / max(float(heat_t.sum()), 1.0) + 0.1 * box
    assert float(got) == pytest.approx(want, rel=1e-4)
    same = cn.CenterNetDetector.distillation_loss((heat_t, wh_t), (heat_t, wh_t))
    assert abs(float(same)) < 1e-5


def test_distilling_some_classes_reads_only_their_scores():
    g = torch.Generator().manual_seed(2)
    heat_t, heat_s = (torch.rand(1, 3, 2, 5, generator=g) * 0.9 + 0.05 for _ in range(2))
    wh_t, wh_s = (torch.rand(1, 3, 2, 4, generator=g) * 20 for _ in range(2))
    got = cn.CenterNetDetector.distillation_loss((heat_s, wh_s), (heat_t, wh_t), classes=[0])
    w = heat_t[..., :1]
    box = float(((wh_s - wh_t).abs() * w).sum() / (4 * w.sum()))
    want = _binary_kl(heat_s[..., 0], heat_t[..., 0]) / max(float(w.sum()), 1.0) + 0.1 * box
    assert float(got) == pytest.approx(want, rel=1e-4)
    other = heat_s.clone()
    other[..., 1:] = 0.5  # the other classes' scores change nothing
    assert float(
        cn.CenterNetDetector.distillation_loss((other, wh_s), (heat_t, wh_t), classes=[0])
    ) == pytest.approx(float(got), rel=1e-6)
    scores = [torch.rand(2, n, 80, generator=g) * 0.9 + 0.05 for n in (6, 3, 2)]
    regs = [torch.randn(2, n, 4 * BINS, generator=g) for n in (6, 3, 2)]
    moved = [s.clone() for s in scores]
    for m in moved:
        m[..., 1:] = torch.rand(m[..., 1:].shape, generator=g) * 0.9 + 0.05
    t, st = (*scores, *regs), (*moved, *regs)
    assert abs(float(NanoDetDetector.distillation_loss(st, t, classes=[0]))) < 1e-5
    assert float(NanoDetDetector.distillation_loss(st, t)) > 0.1  # all 80 classes: they differ
    with pytest.raises(SparsityError, match=r"in \[0, 79\]"):
        DetectorDistillation(TinyCenterNet(), classes=[80])
    # a detector keeping some classes: COCO indices map to its output channels
    kept = TinyCenterNet()
    kept.classes = (0, 2, 5)
    assert DetectorDistillation(kept, classes=[5, 0]).classes == [2, 0]
    with pytest.raises(SparsityError, match="not all among the detector's"):
        DetectorDistillation(kept, classes=[1])


def test_nanodet_loss_is_zero_at_the_teacher_and_its_box_term_a_weighted_kl():
    g = torch.Generator().manual_seed(1)
    scores = [torch.rand(2, n, 80, generator=g) * 0.9 + 0.05 for n in (6, 3, 2)]
    regs = [torch.randn(2, n, 4 * BINS, generator=g) for n in (6, 3, 2)]
    teacher = (*scores, *regs)
    assert abs(float(NanoDetDetector.distillation_loss(teacher, teacher))) < 1e-5
    moved = (*scores, *(r + torch.randn(r.shape, generator=g) for r in regs))
    got = float(NanoDetDetector.distillation_loss(moved, teacher))
    kl, weight = 0.0, 0.0
    for s, t, sc in zip(moved[3:], regs, scores, strict=True):
        p = t.reshape(*t.shape[:2], 4, BINS).softmax(-1)
        q = s.reshape(*s.shape[:2], 4, BINS).softmax(-1)
        side = (p * (p.log() - q.log())).sum(-1).mean(-1)
        kl += float((side * sc.amax(-1)).sum())
        weight += float(sc.amax(-1).sum())
    assert got == pytest.approx(kl / weight, rel=1e-4)


def test_box_weight_scales_only_the_box_term_and_is_checked():
    det = TinyCenterNet()
    student = copy.deepcopy(det.net)
    with torch.no_grad():
        student.head.bias.add_(0.3)  # moves both the heat and the box sides
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    loss = {w: float(DetectorDistillation(det, box_weight=w)(student, images)) for w in (0, 1, 3)}
    box = loss[1] - loss[0]
    assert box > 0 and loss[0] > 0
    assert loss[3] == pytest.approx(loss[0] + 3 * box, rel=1e-5)
    default = float(DetectorDistillation(det)(student, images))
    assert default == pytest.approx(loss[0] + 0.1 * box, rel=1e-5)  # CenterNet's own 0.1
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(SparsityError, match="box_weight must be a finite number >= 0"):
            DetectorDistillation(det, box_weight=bad)


def test_quality_focal_kl_weights_each_cell_by_its_error_power():
    g = torch.Generator().manual_seed(5)
    heat_t, heat_s = (torch.rand(1, 3, 2, 5, generator=g) * 0.9 + 0.05 for _ in range(2))
    wh = torch.rand(1, 3, 2, 4, generator=g) * 20
    want = sum(
        abs(a - b) ** 2 * (b * math.log(b / a) + (1 - b) * math.log((1 - b) / (1 - a)))
        for a, b in zip(heat_s.flatten().tolist(), heat_t.flatten().tolist(), strict=True)
    )
    got = cn.CenterNetDetector.distillation_loss((heat_s, wh), (heat_t, wh), focal=2.0)
    assert float(got) == pytest.approx(want / float(heat_t.sum()), rel=1e-4)
    plain = cn.CenterNetDetector.distillation_loss((heat_s, wh), (heat_t, wh))
    assert float(plain) == pytest.approx(_binary_kl(heat_s, heat_t) / float(heat_t.sum()), 1e-4)
    # a cell the student misses (0.05 against 0.6) outweighs a nearly matched one far more
    t, s = torch.tensor([0.6, 0.01]), torch.tensor([0.05, 0.02])
    ratio = [
        float(binary_kl_sum(s[:1], t[:1], focal=f) / binary_kl_sum(s[1:], t[1:], focal=f))
        for f in (0.0, 2.0)
    ]
    assert ratio[1] > 100 * ratio[0]
    assert float(binary_kl_sum(t, t, focal=2.0)) == pytest.approx(0.0, abs=1e-6)
    for bad in (-0.5, float("nan")):
        with pytest.raises(SparsityError, match="focal must be a finite number >= 0"):
            DetectorDistillation(TinyCenterNet(), focal=bad)


def test_size_balance_gives_a_small_persons_cells_the_weight_of_a_large_ones():
    # a hand-worked case: reference side 128 px, balance 2
    score = torch.tensor([0.0, 1.0, 1.0, 1.0, 0.5])
    side = torch.tensor([10.0, 256.0, 64.0, 8.0, 64.0])
    w = size_balance(score, side, 2.0, ref=128.0)
    # background (score 0): 1; larger than the reference: 1; half of it: 4; a 16th: capped at 16
    assert w.tolist() == pytest.approx([1.0, 1.0, 4.0, 16.0, 2.5])
    assert torch.equal(size_balance(score, side, 0.0, ref=128.0), torch.ones(5))
    # CenterNet: two persons, a large and a small one, missed alike by the student: with balance 2
    # the small one's term rises by its weight against the large one's
    heat_t = torch.zeros(1, 8, 8, 1)
    heat_t[0, 1, 1, 0], heat_t[0, 6, 6, 0] = 0.8, 0.8
    wh = torch.zeros(1, 8, 8, 4)
    wh[0, 1, 1], wh[0, 6, 6] = torch.full((4,), 150.0), torch.full((4,), 16.0)  # sides 300, 32
    heat_s = heat_t.clone()
    heat_s[0, 1, 1, 0] = 0.1
    large = cn.CenterNetDetector.distillation_loss((heat_s, wh), (heat_t, wh), balance=2.0)
    heat_s = heat_t.clone()
    heat_s[0, 6, 6, 0] = 0.1
    small = cn.CenterNetDetector.distillation_loss((heat_s, wh), (heat_t, wh), balance=2.0)
    # weights at the two peaks: 1 and 1 + 0.8 * (16 - 1) = 13
    assert float(small / large) == pytest.approx(13.0, rel=1e-3)
    misses = []
    for p in (1, 6):  # balance 0: the two misses cost alike
        heat_s = heat_t.clone()
        heat_s[0, p, p, 0] = 0.1
        misses.append(cn.CenterNetDetector.distillation_loss((heat_s, wh), (heat_t, wh)))
    assert float(misses[1] / misses[0]) == pytest.approx(1.0, rel=1e-5)
    for bad in (-1.0, float("inf")):
        with pytest.raises(SparsityError, match="balance must be a finite number >= 0"):
            DetectorDistillation(TinyCenterNet(), balance=bad)

    class NoBalance(TinyCenterNet):  # a detector whose loss has no size balance (as NanoDet's)
        @staticmethod
        def distillation_loss(student, teacher, box_weight=0.1, classes=None, focal=0.0):
            return cn.CenterNetDetector.distillation_loss(student, teacher, box_weight, classes)

    with pytest.raises(SparsityError, match="distillation loss has no size balance"):
        DetectorDistillation(NoBalance(), balance=2.0)
    with pytest.raises(SparsityError, match="has only its own box term"):
        DetectorDistillation(NoBalance(), box_loss="iou")
    DetectorDistillation(NoBalance())  # balance 0 asks nothing of the loss


def test_iou_box_term_is_scale_free_and_matches_a_hand_worked_iou():
    # (left, top, right, bottom) around one point: areas 4 x 2 = 8 and 3 x 2 = 6, overlap 2 x 1
    a, b = torch.tensor([1.0, 2.0, 3.0, 0.0]), torch.tensor([2.0, 1.0, 1.0, 1.0])
    assert float(side_iou(a, b)) == pytest.approx(2 / 12)
    assert float(side_iou(a, a)) == 1.0 and float(side_iou(a, a * 2)) == pytest.approx(0.25)
    heat = torch.zeros(1, 2, 2, 1)
    heat[0, 0, 0, 0], heat[0, 1, 1, 0] = 0.5, 1.0
    wh_t = torch.tensor([1.0, 2.0, 3.0, 0.0]).expand(1, 2, 2, 4).clone()
    wh_s = wh_t.clone()
    wh_s[0, 0, 0] = b
    got = cn.CenterNetDetector.distillation_loss((heat, wh_s), (heat, wh_t), 1.0, box_loss="iou")
    assert float(got) == pytest.approx(0.5 * (1 - 2 / 12) / 1.5, rel=1e-5)  # heat-weighted mean
    # a small and a large box with the same relative error cost alike; the L1 term does not
    big, small = torch.full((1, 1, 1, 4), 100.0), torch.full((1, 1, 1, 4), 10.0)
    one = torch.ones(1, 1, 1, 1)
    for kind, same in (("iou", True), ("l1", False)):
        costs = [
            float(
                cn.CenterNetDetector.distillation_loss((one, x * 1.2), (one, x), 1.0, box_loss=kind)
            )
            for x in (big, small)
        ]
        assert (costs[0] == pytest.approx(costs[1], rel=1e-5)) is same
    with pytest.raises(SparsityError, match="box_loss must be 'l1' or 'iou'"):
        DetectorDistillation(TinyCenterNet(), box_loss="giou")


def test_fit_with_loss_fn_trains_on_it_alone():
    model = nn.Linear(4, 2)
    data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.zeros(32, dtype=torch.long))
    target = torch.tensor([1.0, -1.0])

    def loss_fn(net, x, y):
        return ((net(x) - target) ** 2).mean()

    cfg = TrainConfig(epochs=30, batch_size=8, lr=0.05, progress=False)
    hist = fit(model, data, None, cfg, loss_fn=loss_fn)
    assert hist.epochs[-1]["train_loss"] < 0.1 * hist.epochs[0]["train_loss"]
    assert "train_acc" not in hist.epochs[-1]
    with pytest.raises(ConfigError, match="val_set=None"):
        fit(model, data, data, cfg, loss_fn=loss_fn)


class TinyGraph(nn.Module):
    """CenterNet's interface at a fraction of the cost: 512 x 512 raw 0-255 input, outputs a sigmoid
    heatmap [B, 128, 128, 80] and box sides [B, 128, 128, 4]."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, 4)
        self.mid = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 84, 1)

    def forward(self, x):
        y = self.head(self.mid(self.stem(x / 255).relu()).relu())
        return y[:, :80].sigmoid().permute(0, 2, 3, 1), y[:, 80:].exp().permute(0, 2, 3, 1)


class TinyCenterNet(cn.CenterNetDetector):
    def __init__(self):
        PersonDetector.__init__(self)
        torch.manual_seed(0)
        self.net = fx.symbolic_trace(TinyGraph())
        self.threshold, self.nms_iou = 0.3, 0.4


def _photos(n):
    g = torch.Generator().manual_seed(3)
    box = torch.tensor([[10.0, 12.0, 40.0, 60.0]])
    return PersonPhotos(
        [
            PersonPhoto(
                f"p_{i}",
                "p",
                torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=g),
                box,
            )
            for i in range(n)
        ]
    )


def test_prune_detector_distils_the_pruned_graph_and_resumes(tmp_path):
    det = TinyCenterNet()
    images = UnlabeledImages.from_photos(_photos(4), det.input_size)
    held_out = _photos(2)
    cfg = TrainConfig(epochs=2, batch_size=2, lr=1e-3, progress=False)
    dense_net = copy.deepcopy(det.net)
    out = prune_detector(
        det, "magnitude", images, held_out, rates=0.5, finetune=cfg, workdir=tmp_path
    )
    assert set(masks_of(out.model)) == {"mid"}  # the stem and the head stay dense
    assert all(
        0.0 <= a <= 1.0 for a in (out.accuracy_dense, out.accuracy_pruned, out.accuracy_finetuned)
    )
    assert out.accuracy_dense == pytest.approx(detector_ap(det, held_out))
    assert out.history[-1]["train_loss"] < out.history[0]["train_loss"]  # distillation learns
    # the detector itself is untouched; with_net detects with the pruned graph
    assert all(
        torch.equal(a, b)
        for a, b in zip(det.net.state_dict().values(), dense_net.state_dict().values(), strict=True)
    )
    assert with_net(det, out.model).net is out.model and det.net is not out.model
    again = prune_detector(
        det, "magnitude", images, held_out, rates=0.5, finetune=cfg, workdir=tmp_path, resume=True
    )
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            out.model.state_dict().values(), again.model.state_dict().values(), strict=True
        )
    )


def test_a_detector_without_the_distillation_members_is_refused():
    class Plain(PersonDetector):
        def candidates(self, images):
            return []

    with pytest.raises(SparsityError, match="cannot be distilled: it lacks net, prepare"):
        DetectorDistillation(Plain())


def test_detector_layers_leave_the_stem_heads_and_tiny_layers_dense():
    det = TinyCenterNet()
    layers, dense = detector_layers(det)
    assert layers == ["mid"]
    assert dense == {"stem": "first conv (the raw image)", "head": "head (feeds an output)"}
    layers, dense = detector_layers(det, min_share=0.6)  # mid: 52 % of the MACs
    assert layers == [] and dense["mid"] == "under 60.0% of the MACs"


def test_feature_distillation_matches_the_pruned_layers_outputs():
    det = TinyCenterNet()
    x = torch.rand(2, 3, 64, 64)
    plain = DetectorDistillation(det)
    feats = DetectorDistillation(det, features=["mid"], feature_weight=2.0)
    student = copy.deepcopy(det.net)
    assert float(feats(student, x)) == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        student.mid.weight[:8] = 0  # half the filters pruned
    inputs = det.prepare(x)
    with torch.no_grad():
        t = det.net.stem(inputs[0] / 255).relu()
        want = (student.mid(t) - det.net.mid(t)).pow(2).mean() / det.net.mid(t).pow(2).mean()
    got = float(feats(student, x)) - float(plain(student, x))
    assert got == pytest.approx(2.0 * float(want), rel=1e-4)
    with pytest.raises(SparsityError, match="no modules named"):
        DetectorDistillation(det, features=["nope"])


def test_head_feature_distillation_matches_the_heads_inputs():
    det = TinyCenterNet()
    x = torch.rand(2, 3, 64, 64)
    plain = DetectorDistillation(det)
    heads = DetectorDistillation(det, feature_inputs=head_convs(det), feature_weight=3.0)
    assert head_convs(det) == ["head"]
    student = copy.deepcopy(det.net)
    assert float(heads(student, x)) == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        student.mid.weight[:8] = 0
    inputs = det.prepare(x)
    with torch.no_grad():
        t = det.net.stem(inputs[0] / 255).relu()
        s_in, t_in = student.mid(t).relu(), det.net.mid(t).relu()  # what the head reads
        want = (s_in - t_in).pow(2).mean() / t_in.pow(2).mean()
    got = float(heads(student, x)) - float(plain(student, x))
    assert got == pytest.approx(3.0 * float(want), rel=1e-4)
    with pytest.raises(SparsityError, match="no modules named"):
        DetectorDistillation(det, feature_inputs=["nope"])


def test_prune_detector_refuses_an_unknown_feature_place(tmp_path):
    det = TinyCenterNet()
    images = UnlabeledImages.from_photos(_photos(2), det.input_size)
    with pytest.raises(SparsityError, match="feature_at must be one of"):
        prune_detector(det, "magnitude", images, _photos(1), rates=0.5, feature_at="middle")


def test_an_unreachable_mac_target_is_refused_before_any_training():
    det = TinyCenterNet()
    images = UnlabeledImages.from_photos(_photos(2), det.input_size)
    with pytest.raises(SparsityError, match=r"out of reach .* at most"):
        prune_detector(det, "magnitude", images, _photos(1), flops_reduction=50.0)


def test_a_pruned_graph_is_pruned_further_from_its_own_weights_against_the_dense_teacher(tmp_path):
    det = TinyCenterNet()
    images = UnlabeledImages.from_photos(_photos(4), det.input_size)
    held_out = _photos(2)
    cfg = TrainConfig(epochs=1, batch_size=2, lr=1e-3, progress=False)
    one = prune_detector(
        det, "magnitude", images, held_out, rates=0.25, finetune=cfg, workdir=tmp_path / "one"
    )
    dense_net = copy.deepcopy(det.net)
    start = one.model.state_dict()
    two = prune_detector(
        det,
        "magnitude",
        images,
        held_out,
        rates=0.5,
        finetune=cfg,
        workdir=tmp_path / "two",
        start=start,
    )
    # scored from the start graph, not the dense detector
    assert two.accuracy_dense == pytest.approx(detector_ap(with_net(det, one.model), held_out))
    m1, m2 = masks_of(one.model)["mid"], masks_of(two.model)["mid"]
    assert m2.float().mean() < m1.float().mean()
    assert not (m2.bool() & ~m1.bool()).any()  # magnitude: the units stage one removed stay out
    assert all(  # the detector (the teacher) is untouched
        torch.equal(a, b)
        for a, b in zip(det.net.state_dict().values(), dense_net.state_dict().values(), strict=True)
    )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("mid.weight"), r"missing \['mid.weight'\]"),
        (lambda s: s.update(extra=torch.zeros(1)), r"unexpected \['extra'\]"),
        (
            lambda s: s.update({"mid.weight": torch.zeros(16, 16, 1, 1)}),
            r"mid.weight is \(16, 16, 1",
        ),
        (lambda s: s["mid.bias"].fill_(float("nan")), "mid.bias holds NaN or Inf"),
    ],
)
def test_a_start_graph_that_does_not_fit_is_refused(edit, message):
    det = TinyCenterNet()
    images = UnlabeledImages.from_photos(_photos(2), det.input_size)
    start = {k: v.clone() for k, v in det.net.state_dict().items()}
    edit(start)
    with pytest.raises(SparsityError, match=message):
        prune_detector(det, "magnitude", images, _photos(1), rates=0.5, start=start)
