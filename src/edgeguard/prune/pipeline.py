"""The pruning pipeline: regularise -> hard prune -> masked fine-tune, resumable at every stage."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..engine import TrainConfig, evaluate, fit
from ..modelfile import load_model, save_model
from ..models.flops import FlopsReport, count_flops
from ..sparsity import SparsityError, SparsityScheme, get_masks
from ..sparsity.model import attach_masks, compute_masks, resolve_rates
from .base import Pruner, get_pruner
from .reconstruct import reconstruct

log = logging.getLogger(__name__)


@dataclass
class PruningOutcome:
    """Accuracies (in [0, 1]; or the run's ``score``) of the dense model, right after hard pruning and
    after fine-tuning, the FLOPs report of the pruned model, its per-layer rates and the training histories."""

    model: nn.Module
    method: str
    scheme: SparsityScheme
    rates: dict[str, float]
    flops: FlopsReport
    accuracy_dense: float
    accuracy_pruned: float
    accuracy_finetuned: float
    regularize_history: list[dict[str, float]] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)


def _check_same_pruner(spec: dict[str, Any], pruner: Pruner, stage: Path) -> None:
    """Refuse to resume a hard-pruned stage made by another method, scheme or options."""
    extra = spec.get("extra", {})
    scheme = pruner.spec_scheme.spec() if pruner.spec_scheme is not None else None
    stored_scheme = next((e.get("scheme") for e in spec.get("layers", {}).values()), None)
    pairs = {
        "method": (extra.get("method"), pruner.name),
        "options": (extra.get("options"), pruner.options()),
    }
    if scheme is not None:
        pairs["scheme"] = (stored_scheme, scheme)
    diff = [f"{k}: stored {a!r}, given {b!r}" for k, (a, b) in pairs.items() if a != b]
    if diff:
        raise SparsityError(f"cannot resume {stage} with another pruner ({'; '.join(diff)})")


def run_pruning(
    model: nn.Module,
    pruner: Pruner | str,
    train_set: Dataset,
    val_set: Dataset | None,
    input_shape: tuple[int, ...],
    rates: Any = None,
    flops_reduction: float | None = None,
    regularize: TrainConfig | None = None,
    finetune: TrainConfig | None = None,
    distill_weight: float = 0.0,
    workdir: str | Path | None = None,
    resume: bool = False,
    copy_model: bool = True,
    layers: list[str] | None = None,
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    score: Callable[[nn.Module], float] | None = None,
    callbacks: Sequence[Callable[[int, nn.Module, dict[str, float]], None]] = (),
    reconstruct_inputs: Sequence[tuple] | None = None,
    refit: Sequence[str] = (),
    reselect: bool = False,
) -> PruningOutcome:
    """Prune ``model`` with ``pruner`` to ``rates`` or ``flops_reduction`` and fine-tune it.

    Stages: (1) regularisation training with the pruner's penalty (skipped for magnitude or when
    ``regularize`` is None); (2) hard pruning to ``pruner.final_masks``; (3) masked fine-tuning, with
    knowledge distillation from the dense model when ``distill_weight > 0``.  With ``workdir`` each
    stage checkpoints there (``regularize/last.pt``, ``pruned.safetensors``, ``finetune/last.pt``) and
    ``resume=True`` continues from the last finished stage.

    Models other than classifiers: ``loss_fn(net, x, y)`` is the training loss of both training
    stages (see :func:`~edgeguard.engine.fit`; e.g. distillation from a dense detector) and
    ``score(model)`` the quality figure reported in place of ``val_set`` accuracy (e.g. AP50);
    ``val_set`` may then be None.  ``reconstruct_inputs`` (argument tuples of the model): the hard
    pruning re-solves the kept weights on them, and the ``refit`` layers with all theirs
    (:func:`~edgeguard.prune.reconstruct.reconstruct`; the targets are the model as it stands
    after regularisation); ``reselect``: each layer keeps as many units as the pruner's mask,
    chosen by their OBS saliency during the reconstruction (its ``select``).  ``callbacks`` run
    after every fine-tuning epoch (:func:`~edgeguard.engine.fit`'s ``cb(epoch, model,
    metrics)``; e.g. a score curve).
    """
    pruner = get_pruner(pruner) if isinstance(pruner, str) else pruner
    ft = finetune or TrainConfig(epochs=2, lr=1e-4)
    ft.validate()
    if regularize is not None:
        regularize.validate()
    if not 0.0 <= distill_weight <= 1.0:
        raise SparsityError(f"distill_weight must be in [0, 1], got {distill_weight}")
    if loss_fn is not None and distill_weight > 0:
        raise SparsityError(
            "distill_weight is the classifier's distillation: with loss_fn, distil there"
        )
    if val_set is None and score is None:
        raise SparsityError("give val_set (accuracy) or score (any quality figure)")
    if reselect and (not reconstruct_inputs or pruner.spec_scheme is None):
        raise SparsityError(
            "reselect chooses units during the reconstruction: give reconstruct_inputs and a "
            "pruner with one scheme"
        )

    def measure(m: nn.Module) -> float:
        if score is not None:
            return float(score(m))
        return evaluate(m, val_set, ft.batch_size, ft.device)["accuracy"]

    fit_val = val_set if loss_fn is None else None
    goal = resolve_rates(model, pruner.scheme, rates, flops_reduction, input_shape, layers)
    dense_acc = measure(model)
    teacher = copy.deepcopy(model).eval() if distill_weight > 0 else None
    net = copy.deepcopy(model) if copy_model else model
    work = Path(workdir) if workdir is not None else None
    stage = work / "pruned.safetensors" if work is not None else None
    reg_history: list[dict[str, float]] = []

    if resume and stage is not None and stage.is_file():
        net, _, spec = load_model(stage, model=net)
        _check_same_pruner(spec, pruner, stage)
        final = {k: v.get("rate", float("nan")) for k, v in spec["layers"].items()}
        log.info("resumed: hard-pruned model loaded from %s", stage)
    else:
        dense_flops = count_flops(net, input_shape)
        if flops_reduction is not None:
            target_macs = dense_flops.dense_macs / float(flops_reduction)
        else:
            masks = compute_masks(net, pruner.scheme, goal)
            target_macs = count_flops(net, input_shape, masks=masks).kept_macs
        pruner.setup(net, goal, target_macs=target_macs, flops=dense_flops)
        if pruner.regularizes and regularize is not None:
            log.info("%s: regularising for %d epochs", pruner.name, regularize.epochs)
            torch.manual_seed(regularize.seed)  # see the fine-tuning stage
            hist = fit(
                net,
                train_set,
                fit_val,
                regularize,
                checkpoint_dir=work / "regularize" if work is not None else None,
                resume=resume,
                penalty=pruner.penalty,
                callbacks=[pruner.on_epoch_end],
                extra_state=pruner,
                loss_fn=loss_fn,
            )
            reg_history = hist.epochs
        final_masks = pruner.final_masks(net)
        scheme = pruner.spec_scheme
        if reconstruct_inputs:
            select = scheme if reselect else None
            reconstruct(net, final_masks, reconstruct_inputs, refit=refit, select=select)
            chosen = get_masks(net)
            final_masks = {n: chosen[n] for n in final_masks}
        else:
            attach_masks(net, final_masks)
        # rates as removed units of the scheme, or removed weights when masks mix structures
        final = {
            n: float((~scheme.units_of_mask(m)).float().mean())
            if scheme is not None
            else 1.0 - float(m.float().mean())
            for n, m in final_masks.items()
        }
        if stage is not None:
            extra = {
                "input_shape": list(input_shape),
                "method": pruner.name,
                "options": pruner.options(),
            }
            save_model(net, stage, pruner.spec_scheme, final, extra=extra)
    pruned_acc = measure(net)
    log.info(
        "%s/%s: accuracy %.4f dense -> %.4f hard-pruned",
        pruner.name,
        pruner.scheme.name,
        dense_acc,
        pruned_acc,
    )
    # each stage starts from its own seed (random layers such as dropout), so a run resumed at a
    # stage boundary replays the draws of an uninterrupted one; a resumed epoch restores its own
    torch.manual_seed(ft.seed)
    hist = fit(
        net,
        train_set,
        fit_val,
        ft,
        checkpoint_dir=work / "finetune" if work is not None else None,
        resume=resume,
        teacher=teacher,
        distill_weight=distill_weight,
        loss_fn=loss_fn,
        callbacks=callbacks,
    )
    return PruningOutcome(
        model=net,
        method=pruner.name,
        scheme=pruner.scheme,
        rates=final,
        flops=count_flops(net, input_shape),
        accuracy_dense=dense_acc,
        accuracy_pruned=pruned_acc,
        accuracy_finetuned=measure(net),
        regularize_history=reg_history,
        history=hist.epochs,
    )
