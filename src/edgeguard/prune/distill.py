"""Label-free fine-tuning of a pruned detector: the dense detector is the teacher, and the pruned
network learns to reproduce its class scores and boxes on unlabeled photos.

:class:`DetectorDistillation` is the ``loss_fn`` of :func:`~edgeguard.engine.fit` and
:func:`~edgeguard.prune.run_pruning` (so regularisation, hard pruning and fine-tuning, checkpoints,
resume and progress come from the one pipeline); :func:`detector_ap` is its ``score``.  A detector
takes part through two members: ``prepare(images)`` (photos in [0, 1] to the graph's input) and
``distillation_loss(student_outputs, teacher_outputs, classes=None)`` (see the CenterNet and NanoDet
detectors).
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from ..engine import TrainConfig
from ..models.detectors.base import PersonDetector, twin_with_net
from ..models.detectors.train import evaluate_ap
from ..sparsity import SparsityError
from .base import Pruner
from .pipeline import PruningOutcome, run_pruning

log = logging.getLogger(__name__)


def check_distillable(detector: PersonDetector) -> None:
    """Raise :class:`SparsityError` unless ``detector`` has a graph to prune and a distillation
    loss (the COCO detectors do; HOG and the small CNN do not), naming what it lacks."""
    missing = [m for m in ("net", "prepare", "distillation_loss") if not hasattr(detector, m)]
    if missing:
        raise SparsityError(
            f"detector {getattr(detector, 'name', type(detector).__name__)!r} cannot be distilled: "
            f"it lacks {', '.join(missing)} (the COCO detectors have them: use centernet or nanodet)"
        )


def with_net(detector: PersonDetector, net: nn.Module) -> PersonDetector:
    """A copy of ``detector`` that runs ``net`` (e.g. its pruned graph) in place of its own; the
    detector's other modules and buffers are shared, not copied."""
    check_distillable(detector)
    return twin_with_net(detector, net)


class DetectorDistillation:
    """``loss(net, images, _) -> scalar``: ``net`` (the student graph) and a frozen copy of the
    dense graph (the teacher) run on ``detector.prepare(images)``; the detector's
    ``distillation_loss`` compares their outputs.  ``images`` ``[B, 3, H, W]`` in [0, 1].

    ``features``: names of modules whose outputs are matched too (feature distillation: a masked
    student has the teacher's shapes, so its pruned convs can be asked to reproduce the dense
    activations, as channel-pruning methods reconstruct each layer's output), each term the
    squared error divided by the teacher activation's mean square, averaged over the layers and
    scaled by ``feature_weight``.  ``feature_inputs``: names of modules whose *inputs* are matched
    the same way (e.g. the heads: the last features before each output, the penultimate features
    that few-sample compression mimics).  ``classes``: match only these classes' scores (COCO
    indices, person = 0; default all 80): a pruned person detector keeps its capacity for people.
    ``box_weight``: the box term's weight in ``distillation_loss`` (>= 0; default the detector's
    own); ``focal``: the score term's quality-focal exponent (>= 0; 0, the default, is the plain
    KL; :func:`~edgeguard.models.detectors.base.binary_kl_sum`); ``balance``: the size-balance
    exponent of the loss's per-location weights (CenterNet; 0, the default, weighs every location
    alike; :func:`~edgeguard.models.detectors.base.size_balance`); ``box_loss``: CenterNet's box
    term, ``"l1"`` (default) or ``"iou"`` (scale-free)."""

    def __init__(
        self,
        detector: PersonDetector,
        teacher: nn.Module | None = None,
        features: Sequence[str] = (),
        feature_weight: float = 1.0,
        classes: Sequence[int] | None = None,
        feature_inputs: Sequence[str] = (),
        box_weight: float | None = None,
        focal: float = 0.0,
        balance: float = 0.0,
        box_loss: str = "l1",
    ) -> None:
        check_distillable(detector)
        self.detector = detector
        self.teacher = copy.deepcopy(detector.net if teacher is None else teacher).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        known = dict(self.teacher.named_modules())
        unknown = [f for f in [*features, *feature_inputs] if f not in known]
        if unknown:
            raise SparsityError(f"no modules named {unknown} in the detector's graph")
        if feature_weight < 0:
            raise SparsityError(f"feature_weight must be >= 0, got {feature_weight}")
        self.features, self.feature_weight = list(features), float(feature_weight)
        self.feature_inputs = list(feature_inputs)
        if box_weight is not None and not (math.isfinite(box_weight) and box_weight >= 0):
            raise SparsityError(f"box_weight must be a finite number >= 0, got {box_weight}")
        if not (math.isfinite(focal) and focal >= 0):
            raise SparsityError(f"focal must be a finite number >= 0, got {focal}")
        self.box_weight, self.focal = box_weight, float(focal)
        if not (math.isfinite(balance) and balance >= 0):
            raise SparsityError(f"balance must be a finite number >= 0, got {balance}")
        params = inspect.signature(detector.distillation_loss).parameters
        if balance and "balance" not in params:
            raise SparsityError(
                f"balance: {type(detector).__name__}'s distillation loss has no size balance "
                "(CenterNet's has); leave it at 0"
            )
        self.balance = float(balance)
        if box_loss not in ("l1", "iou"):
            raise SparsityError(f"box_loss must be 'l1' or 'iou', got {box_loss!r}")
        if box_loss != "l1" and "box_loss" not in params:
            raise SparsityError(
                f"box_loss: {type(detector).__name__}'s distillation loss has only its own box "
                "term (CenterNet's has 'iou'); leave it at 'l1'"
            )
        self.box_loss = box_loss
        if classes is not None:
            classes = [int(c) for c in classes]
            if not classes or min(classes) < 0 or max(classes) >= 80:
                raise SparsityError(f"classes must be COCO class indices in [0, 79], got {classes}")
            have = list(getattr(detector, "classes", range(80)))  # a detector may keep fewer
            if any(c not in have for c in classes):
                raise SparsityError(f"classes {classes} are not all among the detector's {have}")
            classes = [have.index(c) for c in classes]  # COCO indices -> output channels
        self.classes = classes

    def _run(self, net: nn.Module, inputs) -> tuple[object, list[torch.Tensor]]:
        """The network's outputs and the outputs of ``self.features`` then the first inputs of
        ``self.feature_inputs``, in call order (hooks live for one call)."""
        modules = dict(getattr(net, "module", net).named_modules())  # DDP wraps the graph
        seen: list[torch.Tensor] = []
        hooks = [
            modules[f].register_forward_hook(lambda _m, _i, out: seen.append(out))
            for f in self.features
        ] + [
            modules[f].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
            for f in self.feature_inputs
        ]
        try:
            return net(*inputs), seen
        finally:
            for h in hooks:
                h.remove()

    def __call__(self, net: nn.Module, images: torch.Tensor, _labels=None) -> torch.Tensor:
        inputs = self.detector.prepare(images)
        student, s_feats = self._run(net, inputs)
        with torch.no_grad():
            teacher, t_feats = self._run(self.teacher, inputs)
        options = {} if self.box_weight is None else {"box_weight": self.box_weight}
        if self.focal:
            options["focal"] = self.focal
        if self.balance:
            options["balance"] = self.balance
        if self.box_loss != "l1":
            options["box_loss"] = self.box_loss
        loss = self.detector.distillation_loss(student, teacher, classes=self.classes, **options)
        if (self.features or self.feature_inputs) and self.feature_weight > 0:
            terms = [
                (s - t).pow(2).mean() / t.pow(2).mean().clamp_min(1e-8)
                for s, t in zip(s_feats, t_feats, strict=True)
            ]
            loss = loss + self.feature_weight * torch.stack(terms).mean()
        return loss


def detector_ap(detector: PersonDetector, photos, net: nn.Module | None = None) -> float:
    """Person AP50 (VOC all-point, every annotated person a positive) of ``detector`` -- running
    ``net`` in place of its own graph when given -- on whole ``photos`` at their own size, scored
    down to 0.01 (the protocol of ``benchmarks/coco_detectors.py``)."""
    det = with_net(detector, net) if net is not None else detector
    with torch.no_grad():
        return evaluate_ap(det, photos, side=None, min_score=0.01)


def detector_layers(
    detector: PersonDetector, min_share: float = 0.005
) -> tuple[list[str], dict[str, str]]:
    """(layers to prune, {layer left dense: why}) of a detector's graph (a ``torch.fx``
    GraphModule) at its input size: every prunable conv except the first one (it sees the raw
    image), the heads (convs from which a graph output is reached without another conv) and convs
    with under ``min_share`` of the dense MACs (squeeze-excite and similar: pruning them saves
    nothing and costs accuracy).  Depthwise convs are not prunable by the schemes and stay dense."""
    from torch import fx

    from ..models.flops import count_flops
    from ..sparsity import prunable_layers

    check_distillable(detector)
    net = detector.net
    if not isinstance(net, fx.GraphModule):
        raise SparsityError("detector_layers reads the graph of a torch.fx GraphModule")
    mods = dict(net.named_modules())
    flops = count_flops(net, (1, 3, *detector.input_size))
    macs = {layer.name: layer.dense_macs for layer in flops.layers}

    def is_conv(node) -> bool:
        return node.op == "call_module" and isinstance(mods[node.target], nn.Conv2d)

    def reaches_output(node) -> bool:
        stack, seen = [node], set()
        while stack:
            for user in stack.pop().users:
                if user in seen:
                    continue
                seen.add(user)
                if user.op == "output":
                    return True
                if not is_conv(user):
                    stack.append(user)
        return False

    convs = [n for n in net.graph.nodes if is_conv(n)]
    dense = {}
    if convs:
        dense[convs[0].target] = "first conv (the raw image)"
    for n in convs:
        if reaches_output(n):
            dense.setdefault(n.target, "head (feeds an output)")
        elif mods[n.target].groups > 1:
            dense.setdefault(n.target, "depthwise / grouped")
        elif macs.get(n.target, 0) < min_share * flops.dense_macs:
            dense.setdefault(n.target, f"under {min_share:.1%} of the MACs")
    return [n for n in prunable_layers(net) if n not in dense], dense


FEATURE_AT = ("pruned", "heads", "both")


def cut_classes(
    detector: PersonDetector, classes: Sequence[int], flops_reduction: float
) -> tuple[PersonDetector, float]:
    """(``detector.keep_classes(classes)``, the MAC reduction still to make on it so that the
    pruned graph has ``flops_reduction`` x fewer MACs than ``detector``'s, the cut included).
    A MAC target the cut alone already reaches is refused."""
    from ..models.flops import count_flops

    check_distillable(detector)
    if not hasattr(detector, "keep_classes"):
        raise SparsityError(f"detector {detector.name!r} cannot keep only some classes")
    shape = (1, 3, *detector.input_size)
    cut = detector.keep_classes(classes)
    share = count_flops(cut.net, shape).dense_macs / count_flops(detector.net, shape).dense_macs
    rest = flops_reduction * share
    if rest <= 1.0:
        raise SparsityError(
            f"keeping classes {list(cut.classes)} alone removes {1 - share:.1%} of the MACs, "
            f"which already meets a {flops_reduction}x target: ask for more than {1 / share:.3f}x"
        )
    return cut, rest


def head_convs(detector: PersonDetector, dense: dict[str, str] | None = None) -> list[str]:
    """The head convs of a detector's graph: those :func:`detector_layers` leaves dense because a
    graph output is reached from them without another conv (``dense``: its second result, when
    the caller has it already)."""
    if dense is None:
        _, dense = detector_layers(detector)
    return [n for n, why in dense.items() if why.startswith("head")]


def load_start(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` into ``net`` (a copy of a detector's graph): every tensor of the graph, with
    its shape, dtype float and finite values; else a one-line error naming the first that is not."""
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise SparsityError(
            f"start does not fit the detector's graph: missing {missing[:3]}, unexpected "
            f"{extra[:3]} ({len(missing)} / {len(extra)} in all)"
        )
    for k, v in own.items():
        t = state[k]
        if not torch.is_tensor(t) or t.shape != v.shape:
            shape = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            raise SparsityError(f"start: {k} is {shape}, the graph's is {tuple(v.shape)}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise SparsityError(f"start: {k} holds NaN or Inf")
    net.load_state_dict(state)


def prune_detector(
    detector: PersonDetector,
    pruner: Pruner | str,
    images: Dataset,
    held_out,
    flops_reduction: float | None = None,
    rates=None,
    finetune: TrainConfig | None = None,
    regularize: TrainConfig | None = None,
    workdir: str | Path | None = None,
    resume: bool = False,
    layers: list[str] | None = None,
    callbacks=(),
    feature_weight: float = 0.0,
    classes: Sequence[int] | None = None,
    reconstruct: int = 0,
    reselect: bool = False,
    feature_at: str = "pruned",
    start: dict[str, torch.Tensor] | None = None,
    box_weight: float | None = None,
    focal: float = 0.0,
    balance: float = 0.0,
    box_loss: str = "l1",
) -> PruningOutcome:
    """Prune ``detector``'s graph with ``pruner`` (to ``flops_reduction`` x fewer MACs at the
    detector's input size, or to ``rates``) and fine-tune it by distillation from the dense graph
    on the unlabeled ``images`` (items ``(image [3, H, W] in [0, 1], _)``, e.g.
    :class:`~edgeguard.data.UnlabeledImages`); AP50 on the ``held_out`` photos is the score of each
    stage (``accuracy_*`` of the outcome).  ``layers``: default :func:`detector_layers` (the
    layers it leaves dense are logged).  ``feature_weight > 0`` adds feature distillation
    (``feature_at``: ``"pruned"``, the outputs of the pruned layers; ``"heads"``, the inputs of the
    head convs; ``"both"``) and ``classes`` restricts the matched scores (see
    :class:`DetectorDistillation`).  ``reconstruct > 0``: the hard pruning re-solves the kept
    weights on the first ``reconstruct`` images (whole and unaugmented when ``images`` has a
    ``plain()`` view, as :class:`~edgeguard.data.UnlabeledImages` has), and refits every other
    conv of the graph (:mod:`.reconstruct`); ``reselect``: the units each pruned layer keeps are
    chosen there by their OBS saliency (as many as the pruner's masks keep).  ``start``: a state
    dict of the same graph to prune instead of the detector's weights (a pruned and fine-tuned
    graph pruned further: gradual pruning in stages, Zhu & Gupta 2017); the teacher stays the
    detector, and the MAC target stays a reduction of its dense graph.  ``box_weight``: the
    weight of the box term against the scores' (default: the detector's own); ``focal``: the
    score term's quality-focal exponent (0: plain KL); ``balance``: the loss's size balance
    and ``box_loss``: its box term (:class:`DetectorDistillation`).  The detector itself
    is left as it is: the pruned graph is ``outcome.model`` (``with_net(detector,
    outcome.model)`` detects with it)."""
    check_distillable(detector)
    if feature_at not in FEATURE_AT:
        raise SparsityError(f"feature_at must be one of {FEATURE_AT}, got {feature_at!r}")
    dense = None
    if layers is None:
        layers, dense = detector_layers(detector)
        log.info("pruning %d layers; dense: %s", len(layers), dense)
    heads = head_convs(detector, dense) if feature_at != "pruned" and feature_weight > 0 else []
    net = copy.deepcopy(detector.net)
    if start is not None:
        load_start(net, start)
    for p in net.parameters():  # a loaded detector is frozen for attacks: its copy trains
        p.requires_grad_(True)
    calibration = []
    if reconstruct > 0:
        source = images.plain() if hasattr(images, "plain") else images  # no training crops
        calibration = [
            detector.prepare(source[i][0][None]) for i in range(min(reconstruct, len(source)))
        ]
    convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    return run_pruning(
        net,
        pruner,
        images,
        None,
        (1, 3, *detector.input_size),
        rates=rates,
        flops_reduction=flops_reduction,
        regularize=regularize,
        finetune=finetune,
        workdir=workdir,
        resume=resume,
        copy_model=False,
        layers=layers,
        loss_fn=DetectorDistillation(
            detector,
            features=layers if feature_at in ("pruned", "both") else (),
            feature_weight=feature_weight,
            classes=classes,
            feature_inputs=heads if feature_at in ("heads", "both") else (),
            box_weight=box_weight,
            focal=focal,
            balance=balance,
            box_loss=box_loss,
        ),
        score=lambda m: detector_ap(detector, held_out, m),
        callbacks=callbacks,
        reconstruct_inputs=calibration,
        refit=convs,
        reselect=reselect,
    )
