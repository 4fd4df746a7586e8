"""The one model file format: dense and pruned CNNs, GNNs and T-shirt patches are all saved here.

A model file is safetensors with the architecture, the masks and the model spec inside the file's
metadata, and the same spec as readable JSON beside it (``NAME.safetensors`` +
``NAME.json``).  The weights file alone is authoritative, so replacing a saved model is one atomic
rename: a crash between the two writes leaves a stale JSON copy (ignored, with a warning), never a
model that cannot be loaded.  Loading checks that the spec matches the weights.  A patch is the same
container holding one ``patch`` tensor ``[3, h, w]`` in [0, 1] (``kind: "patch"``, no JSON beside it).
Files written as ``edgeguard.pruned/1`` (before GNNs and patches shared the format) still load."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .engine.atomic import atomic_path
from .errors import ConfigError, EdgeguardError
from .sparsity.base import SparsityScheme, scheme_from_spec
from .sparsity.model import attach_masks, get_masks

FORMAT = "edgeguard.model/1"
FORMATS = (FORMAT, "edgeguard.pruned/1")  # readable: the current one and its predecessor
MASK_PREFIX = "__mask__."
SPEC_KEY = "edgeguard_spec"  # safetensors metadata entry holding the spec as JSON

log = logging.getLogger(__name__)


class ModelFileError(EdgeguardError, ValueError):
    """A model or patch file that is missing, truncated, tampered with or does not fit."""


def spec_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def save_model(
    model: nn.Module,
    path: str | Path,
    scheme: SparsityScheme | None = None,
    rates: dict[str, float] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save ``model``'s weights, attached masks and model spec.

    Args:
        path: the ``.safetensors`` file; the spec goes to the same name with ``.json``.
        scheme, rates: recorded in the spec (per layer) when the model was pruned with them.
        extra: any JSON-serialisable metadata (accuracy, dataset, ...).
    Returns the weights path.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ModelFileError(f"models are saved as .safetensors, got {path}")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    masks = get_masks(model)
    layers = {}
    for name, mask in masks.items():
        state[MASK_PREFIX + name] = mask.cpu().to(torch.uint8).contiguous()
        entry: dict[str, Any] = {
            "shape": list(mask.shape),
            "kept": int(mask.sum()),
            "mask_sha256": _digest(mask.to(torch.uint8)),
        }
        if scheme is not None:
            entry["scheme"] = scheme.spec()
            entry["kept_units"] = int(scheme.units_of_mask(mask).sum())
        if rates is not None and name in rates:
            entry["rate"] = rates[name]
        layers[name] = entry
    spec = {
        "format": FORMAT,
        "kind": "model",
        "arch": getattr(model, "edgeguard_arch", None),
        "tensors": sorted(k for k in state if not k.startswith(MASK_PREFIX)),
        "layers": layers,
        "extra": extra or {},
    }
    text = json.dumps(spec, indent=2)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT, SPEC_KEY: text})
    with atomic_path(spec_path(path)) as tmp:
        tmp.write_text(text)
    return path


def _parse_spec(text: str, where: str) -> dict[str, Any]:
    try:
        spec = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFileError(f"model spec {where} is not valid JSON: {err}") from None
    if not isinstance(spec, dict) or spec.get("format") not in FORMATS:
        raise ModelFileError(f"{where} is not an edgeguard model spec (format {FORMAT!r})")
    arch = spec.get("arch")
    problems = []
    if arch is not None and not (
        isinstance(arch, dict)
        and isinstance(arch.get("name"), str)
        and isinstance(arch.get("kwargs", {}), dict)
    ):
        problems.append(f'"arch" must be null or {{"name": str, "kwargs": {{...}}}}, got {arch!r}')
    if not isinstance(spec.get("extra", {}), dict):
        problems.append(f'"extra" must be a mapping, got {spec.get("extra")!r}')
    layers = spec.get("layers", {})
    if not (isinstance(layers, dict) and all(isinstance(v, dict) for v in layers.values())):
        problems.append('"layers" must map layer names to mappings')
    tensors = spec.get("tensors")
    if not (isinstance(tensors, list) and all(isinstance(t, str) for t in tensors)):
        problems.append('"tensors" must be a list of tensor names')
    shape = spec.get("extra", {}).get("input_shape") if not problems else None
    if shape is not None and not (
        isinstance(shape, list)
        and shape
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)
    ):
        problems.append(f'"extra.input_shape" must be a list of positive integers, got {shape!r}')
    if problems:
        raise ModelFileError(f"model spec {where} is malformed: {'; '.join(problems)}")
    return spec


def read_spec(path: str | Path) -> dict[str, Any]:
    """The spec of a saved model: the one inside the weights file's metadata, or (files written
    before it was embedded) the ``.json`` beside it.  A ``.json`` that differs from the embedded
    spec is reported and ignored."""
    path, sp = Path(path), spec_path(path)
    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(
            f"cannot read {path}: truncated or not a safetensors file ({err})"
        ) from None
    if SPEC_KEY in meta:
        spec = _parse_spec(meta[SPEC_KEY], f"inside {path}")
        if sp.is_file() and sp.read_text(errors="replace") != meta[SPEC_KEY]:
            log.warning(
                "%s differs from the spec inside %s (an interrupted save or an edit); "
                "using the one inside the weights file",
                sp,
                path.name,
            )
        return spec
    if not sp.is_file():
        raise ModelFileError(f"model spec not found: {sp} (expected beside {path.name})")
    return _parse_spec(sp.read_text(errors="replace"), str(sp))


def load_model(
    path: str | Path, model: nn.Module | None = None
) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, Any]]:
    """Load a model saved by :func:`save_model`; its masks are attached and applied.

    Args:
        path: the ``.safetensors`` file (spec inside, or in the ``.json`` beside older files).
        model: a model to load into; by default it is rebuilt from the spec's architecture.
    Returns ``(model, masks, spec)``.
    Raises ``ModelFileError`` when a file is missing, truncated or corrupt, or the spec does not match
    the weights (tensor names, mask shapes, kept counts, mask digests, scheme structure, or nonzero
    weights where the mask removes them).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"weights file not found: {path}")
    spec = read_spec(path)
    if spec.get("kind", "model") != "model":
        raise ModelFileError(f"{path} holds a {spec['kind']}, not a model")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(
            f"cannot read {path}: truncated or not a safetensors file ({err})"
        ) from None
    masks = {k[len(MASK_PREFIX) :]: v.bool() for k, v in state.items() if k.startswith(MASK_PREFIX)}
    weights = {k: v for k, v in state.items() if not k.startswith(MASK_PREFIX)}
    if sorted(weights) != spec.get("tensors"):
        raise ModelFileError(f"the spec of {path} does not match its weights: tensor names differ")
    layers = spec.get("layers", {})
    if sorted(layers) != sorted(masks):
        raise ModelFileError(
            f"the spec of {path} does not match its weights: masked layers differ "
            f"(spec {sorted(layers)}, weights {sorted(masks)})"
        )
    for name, entry in layers.items():
        mask = masks[name]
        problems = []
        if list(mask.shape) != entry.get("shape"):
            problems.append(f"mask shape {list(mask.shape)} vs spec {entry.get('shape')}")
        if int(mask.sum()) != entry.get("kept"):
            problems.append(f"{int(mask.sum())} kept weights vs spec {entry.get('kept')}")
        if _digest(mask.to(torch.uint8)) != entry.get("mask_sha256"):
            problems.append("mask digest differs")
        if "scheme" in entry:
            scheme = scheme_from_spec(entry["scheme"])
            if not scheme.is_structured(mask):
                problems.append(f"mask does not follow the {scheme.name!r} structure")
        w = weights.get(name + ".weight")
        if w is None or w.shape != mask.shape:
            problems.append("no weight of the mask's shape")
        elif bool((w[~mask] != 0).any()):
            problems.append("weights removed by the mask are nonzero")
        if problems:
            raise ModelFileError(
                f"the spec of {path} does not match its weights at layer {name}: {'; '.join(problems)}"
            )
    if model is None:
        arch = spec.get("arch")
        if not arch:
            raise ModelFileError(f"the spec of {path} records no architecture; pass model=")
        from .models import build

        try:
            model = build(arch["name"], **arch.get("kwargs", {}))
        except ConfigError as err:
            raise ModelFileError(
                f"the spec of {path} records a model that cannot be built: {err}"
            ) from None
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise ModelFileError(f"weights in {path} do not fit the model: {err}") from None
    attach_masks(model, masks)
    return model, masks, spec


def save_patch_file(
    patch: torch.Tensor, path: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """Save a T-shirt patch ``[3, h, w]`` in [0, 1] (``extra``: e.g. the detectors it was trained
    against) atomically as a ``.safetensors`` model file of kind ``"patch"``."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ModelFileError(f"patches are saved as .safetensors, got {path}")
    if patch.dim() != 3 or patch.shape[0] != 3:
        raise ModelFileError(f"a patch is [3, h, w], got {list(patch.shape)}")
    spec = {"format": FORMAT, "kind": "patch", "tensors": ["patch"], "extra": extra or {}}
    with atomic_path(path) as tmp:
        save_file(
            {"patch": patch.detach().float().cpu().contiguous()},
            str(tmp),
            metadata={"format": FORMAT, SPEC_KEY: json.dumps(spec)},
        )
    return path


def load_patch_file(path: str | Path) -> tuple[torch.Tensor, dict[str, Any]]:
    """``(patch [3, h, w] in [0, 1], extra)`` from :func:`save_patch_file`'s file (files of the
    older bare ``{"patch": ...}`` layout load too, with empty ``extra``)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"patch file {path} not found")
    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
            patch = fh.get_tensor("patch") if "patch" in fh.keys() else None  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(
            f"cannot read {path}: truncated or not a safetensors file ({err})"
        ) from None
    extra: dict[str, Any] = {}
    if SPEC_KEY in meta:
        spec = _parse_spec(meta[SPEC_KEY], f"inside {path}")
        if spec.get("kind") != "patch":
            raise ModelFileError(f"{path} holds a {spec.get('kind', 'model')}, not a patch")
        extra = spec.get("extra", {})
    if patch is None or patch.dim() != 3 or patch.shape[0] != 3:
        raise ModelFileError(f"{path} holds no [3, h, w] 'patch' tensor")
    if not torch.isfinite(patch).all() or patch.min() < 0 or patch.max() > 1:
        raise ModelFileError(f"the patch in {path} has values outside [0, 1] or NaN/Inf")
    return patch.float(), extra
