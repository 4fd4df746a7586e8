"""Dependency-aware channel pruning of whole graphs (the idea of Torch-Pruning's DepGraph, Fang et
al. 2023): the channels that must go together, found by following every tensor of a ``torch.fx``
graph, removed physically.

Each channel a conv (or the graph's input) creates is an *atom*; ops that map channel ``i`` to
channel ``i`` (activations, zero padding, pooling, resizing, spatial means, depthwise convs,
BatchNorm, elementwise products and sums with per-channel constants) pass atoms on, elementwise
ops of two feature maps (residual adds, squeeze-excite products) unite the atoms they combine, and
concatenation along channels joins atom lists.  A module marks itself channel-wise with a class
attribute ``channelwise = True`` (TF's bilinear resize does).  A *group* is a set of united atoms: removing it
removes those filters of every conv that produces it, the matching channels of the depthwise convs
and BatchNorms it passes, and the matching input channels of every conv that reads it.  Atoms that
reach an output or an op this pass does not know (reshapes, transposes, splits: channel shuffles,
flattening) are *frozen*: those channels stay, and the summary says why.

Exactness: a removed group is first *masked* (its producers' filters and biases, its depthwise
channels, BatchNorm shifts and per-channel added constants set to zero), which makes every channel
of the group exactly zero wherever it is read; then removing it changes nothing.  A group whose
channels are not zero after masking (an op such as a sigmoid maps 0 to 0.5) is found by running the
masked graph once and kept.  ``shrink`` of the masked model therefore equals the masked model.
"""

from __future__ import annotations

import copy
import logging
import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..models.surgery import layer_inputs, set_module, slice_conv
from .base import SparsityError

log = logging.getLogger(__name__)

# call_function targets that map channel i of their first argument to channel i of the output
_CHANNELWISE = {
    F.relu,
    torch.relu,
    F.relu6,
    F.leaky_relu,
    F.hardswish,
    F.silu,
    F.gelu,
    torch.sigmoid,
    F.sigmoid,
    torch.tanh,
    F.pad,
    F.max_pool2d,
    F.avg_pool2d,
    F.interpolate,
    torch.nn.functional.dropout,
}
_CHANNELWISE_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone", "float", "detach"}
_BINARY = {operator.add, operator.mul, operator.sub, torch.add, torch.mul, torch.sub}
_ADDITIVE = {operator.add, torch.add, operator.sub, torch.sub, "add", "sub"}
_CHANNELWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.Hardswish,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Identity,
    nn.Dropout,
    nn.Upsample,
)


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


@dataclass
class ChannelGroup:
    """One set of channels that goes together: ``producers`` (conv name, filter), ``depthwise``
    and ``norms`` (module name, channel), ``consumers`` (conv name, input channel), ``constants``
    (buffer name, channel) of per-channel operands."""

    producers: list[tuple[str, int]] = field(default_factory=list)
    depthwise: list[tuple[str, int]] = field(default_factory=list)
    norms: list[tuple[str, int]] = field(default_factory=list)
    consumers: list[tuple[str, int]] = field(default_factory=list)
    constants: list[tuple[str, int]] = field(default_factory=list)


class ChannelGraph:
    """The channel groups of ``model`` (an ``nn.Module``, traced with torch.fx unless it already is
    a GraphModule) for inputs of ``input_shape``.

    Attributes:
        groups: prunable groups (never empty of producers), in graph order.
        frozen: ``{conv name: why}`` for convs whose filters all stay (an output or an op this
            pass does not follow reads them).
        layout: per module or buffer name, the atoms of its channels (``"in"``/``"out"``/``"ch"``).
    """

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        gm = model if isinstance(model, fx.GraphModule) else fx.symbolic_trace(model)
        self.gm = gm
        self._parent: list[int] = []
        self._frozen_why: dict[int, str] = {}
        self.layout: dict[tuple[str, str], list[int]] = {}
        self._consts: dict[str, tuple[str, list[int]]] = {}  # buffer -> (add/mul, atoms)
        self._trace(torch.zeros(input_shape))
        self._collect()

    # -- union-find ---------------------------------------------------------------------------
    def _new(self, n: int) -> list[int]:
        start = len(self._parent)
        self._parent.extend(range(start, start + n))
        return list(range(start, start + n))

    def _find(self, a: int) -> int:
        while self._parent[a] != a:
            self._parent[a] = self._parent[self._parent[a]]
            a = self._parent[a]
        return a

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self._parent[rb] = ra

    def _freeze(self, atoms, why: str) -> None:
        for a in atoms or ():
            self._frozen_why.setdefault(a, why)

    # -- tracing --------------------------------------------------------------------------------
    def _trace(self, x: torch.Tensor) -> None:
        gm, graph = self.gm, self
        mods = dict(gm.named_modules())
        labels: dict[fx.Node, list[int] | None] = {}

        def atoms_of(a):
            return labels.get(a) if isinstance(a, fx.Node) else None

        def channels(v) -> int | None:
            return v.shape[1] if isinstance(v, torch.Tensor) and v.dim() == 4 else None

        class Tracer(fx.Interpreter):
            def run_node(self, n: fx.Node):
                out = super().run_node(n)
                labels[n] = graph._label(n, out, atoms_of, channels, mods)
                return out

        with torch.no_grad():
            Tracer(gm).run(x)

    def _label(self, n, out, atoms_of, channels, mods):
        """The atoms of ``n``'s output channels (None: not a 4-D feature map), recording what
        each op does to the atoms it reads."""
        c_out = channels(out)
        args = [a for a in n.args if isinstance(a, fx.Node)]
        if n.op == "placeholder":
            atoms = self._new(c_out) if c_out else None
            self._freeze(atoms, "the graph's input channels")
            return atoms
        if n.op == "output":
            for node in _nodes_in(n.args):
                self._freeze(atoms_of(node), "read by a graph output")
            return None
        if n.op == "get_attr":
            return None
        if n.op == "call_module":
            m = mods[n.target]
            src = atoms_of(args[0]) if args else None
            if isinstance(m, nn.Conv2d) and m.groups == 1:
                if src is not None:
                    self.layout[(n.target, "in")] = src
                atoms = self._new(m.out_channels)
                self.layout[(n.target, "out")] = atoms
                return atoms
            if _is_depthwise(m) and src is not None:
                self.layout[(n.target, "ch")] = src
                return src
            if isinstance(m, nn.BatchNorm2d) and src is not None:
                self.layout[(n.target, "ch")] = src
                return src
            channelwise = isinstance(m, _CHANNELWISE_MODULES) or getattr(m, "channelwise", False)
            if channelwise and src is not None and c_out == len(src):
                return src
            return self._unknown(n, args, atoms_of, c_out, f"{type(m).__name__} {n.target}")
        if (n.op == "call_function" and n.target is getattr) or (
            n.op == "call_method" and n.target in ("size", "dim")
        ):
            return None  # reads shapes only: the channels are not touched
        if n.op == "call_function":
            f = n.target
            if f in _CHANNELWISE and args and atoms_of(args[0]) is not None:
                src = atoms_of(args[0])
                if c_out == len(src):
                    return src
            if f is torch.mean and args and atoms_of(args[0]) is not None and _spatial_mean(n):
                return atoms_of(args[0])
            if f in _BINARY:
                return self._binary(n, out, atoms_of, c_out)
            if f is torch.cat:
                tensors = n.args[0]
                dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
                parts = [atoms_of(t) for t in tensors]
                if dim in (1, -3) and all(p is not None for p in parts):
                    return [a for p in parts for a in p]
            return self._unknown(n, args, atoms_of, c_out, f"{getattr(f, '__name__', f)}")
        if n.op == "call_method" and args and atoms_of(args[0]) is not None:
            src = atoms_of(args[0])
            if n.target in _CHANNELWISE_METHODS and c_out == len(src):
                return src
            if n.target == "mean" and _spatial_mean(n):
                return src
            if n.target in ("add", "mul", "sub"):
                return self._binary(n, out, atoms_of, c_out)
        return self._unknown(n, args, atoms_of, c_out, f"{n.op} {n.target}")

    def _binary(self, n, out, atoms_of, c_out):
        a, b = n.args[0], n.args[1]
        la, lb = atoms_of(a), atoms_of(b)
        if la is not None and lb is not None and len(la) == len(lb) == c_out:
            for x, y in zip(la, lb, strict=True):
                self._union(x, y)
            return la
        tensor, other = (a, b) if la is not None else (b, a)
        src = atoms_of(tensor)
        if src is None or c_out != len(src):
            return self._unknown(n, [a, b], atoms_of, c_out, _name(n.target))
        if isinstance(other, fx.Node) and other.op == "get_attr":
            const = getattr(self.gm, other.target)
            if const.dim() == 4 and const.shape[1] == len(src) and const.numel() == len(src):
                kind = "add" if n.target in _ADDITIVE else "mul"
                self._consts[other.target] = (kind, src)
                return src
            if const.numel() == 1:
                return src
            return self._unknown(n, [a, b], atoms_of, c_out, f"{_name(n.target)} by a constant")
        if not isinstance(other, fx.Node):
            return src  # a Python number
        return self._unknown(n, [a, b], atoms_of, c_out, _name(n.target))

    def _unknown(self, n, args, atoms_of, c_out, what: str):
        for a in args:
            self._freeze(atoms_of(a), f"read by {what}")
        atoms = self._new(c_out) if c_out else None
        self._freeze(atoms, f"made by {what}")
        return atoms

    # -- groups ---------------------------------------------------------------------------------
    def _collect(self) -> None:
        by_root: dict[int, ChannelGroup] = {}
        frozen_roots = {self._find(a): why for a, why in self._frozen_why.items()}
        self.frozen: dict[str, str] = {}
        for (name, role), atoms in self.layout.items():
            for i, a in enumerate(atoms):
                r = self._find(a)
                if r in frozen_roots:
                    if role == "out":
                        self.frozen.setdefault(name, frozen_roots[r])
                    continue
                g = by_root.setdefault(r, ChannelGroup())
                {"out": g.producers, "in": g.consumers}.get(
                    role, g.depthwise if _is_depthwise(self.gm.get_submodule(name)) else g.norms
                ).append((name, i))
        for buf, (_, atoms) in self._consts.items():
            for i, a in enumerate(atoms):
                r = self._find(a)
                if r in by_root:
                    by_root[r].constants.append((buf, i))
        self._roots = [r for r, g in by_root.items() if g.producers]
        self.groups = [by_root[r] for r in self._roots]

    # -- masking and shrinking ----------------------------------------------------------------
    def mask(self, model: nn.Module, removed: list[int]) -> None:
        """Zero, in ``model`` (this graph or a copy of it), everything of the groups ``removed``
        (indices into :attr:`groups`) that could make their channels non-zero."""
        with torch.no_grad():
            for gi in removed:
                g = self.groups[gi]
                for name, i in g.producers + g.depthwise:
                    m = model.get_submodule(name)
                    m.weight[i] = 0
                    if m.bias is not None:
                        m.bias[i] = 0
                for name, i in g.norms:
                    m = model.get_submodule(name)
                    for t in (m.weight, m.bias, m.running_mean):
                        if t is not None:
                            t[i] = 0
                for buf, i in g.constants:
                    if self._consts[buf][0] == "add":
                        getattr(model, buf).view(-1)[i] = 0
                for name, i in g.consumers:
                    model.get_submodule(name).weight[:, i] = 0

    def leaking(self, model: nn.Module, removed: list[int], x: torch.Tensor) -> list[int]:
        """The groups of ``removed`` whose channels are not exactly zero where a conv reads them in
        the masked ``model`` on input ``x``."""
        seen = layer_inputs(model, x, (nn.Conv2d,))
        bad = []
        for gi in removed:
            for name, i in self.groups[gi].consumers:
                if name in seen and bool(seen[name][:, i].abs().max() > 0):
                    bad.append(gi)
                    break
        return bad

    def shrink(self, model: nn.Module, removed: list[int]) -> nn.Module:
        """A copy of ``model`` (this graph, masked for ``removed``) without the channels of the
        groups ``removed``: convs, depthwise convs, BatchNorms and per-channel constants sliced."""
        gone = {self._roots[gi] for gi in removed}
        out = copy.deepcopy(model)

        def keep(atoms) -> torch.Tensor:
            return torch.tensor([i for i, a in enumerate(atoms) if self._find(a) not in gone])

        names = {name for name, _ in self.layout}
        for name in names:
            m = out.get_submodule(name)
            ins = self.layout.get((name, "in"))
            outs = self.layout.get((name, "out"))
            ch = self.layout.get((name, "ch"))
            if isinstance(m, nn.Conv2d) and m.groups == 1:
                new = slice_conv(
                    m, keep(outs) if outs else None, keep(ins) if ins is not None else None
                )
            elif _is_depthwise(m):
                new = slice_conv(m, keep(ch))
            elif isinstance(m, nn.BatchNorm2d):
                k = keep(ch)
                new = copy.deepcopy(m)
                new.num_features = len(k)
                for attr in ("weight", "bias", "running_mean", "running_var"):
                    t = getattr(m, attr)
                    if t is not None:
                        getattr(new, attr).data = t.data[k].clone()
            else:
                continue
            first = next(m.parameters(), None)
            new.requires_grad_(first is not None and first.requires_grad)
            set_module(out, name, new)
        for buf, (_, atoms) in self._consts.items():
            t = getattr(out, buf)
            setattr(out, buf, t[:, keep(atoms)].clone())
        if isinstance(out, fx.GraphModule):
            out.recompile()
        return out


def _spatial_mean(n: fx.Node) -> bool:
    """Whether ``n`` (``torch.mean`` or ``Tensor.mean``) averages H and W of an NCHW tensor and
    keeps their dimensions (the squeeze of squeeze-excite)."""
    dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
    keep = n.args[2] if len(n.args) > 2 else n.kwargs.get("keepdim", False)
    if not keep or not isinstance(dims, tuple | list):
        return False
    return sorted(int(d) % 4 for d in dims) == [2, 3]


def _name(target) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def _nodes_in(args) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg(args, lambda n: found.append(n))
    return found


@dataclass
class ChannelPruning:
    """What :func:`prune_channels` did: ``model`` the physically smaller copy, ``masked`` the
    same-size masked copy it equals, ``removed`` the groups taken out (of ``graph.groups``),
    ``rate`` the share of each cluster's groups removed, ``reduction`` dense MACs of the input
    model / MACs of ``model``; ``kept_whole`` {conv: why its filters all stay}."""

    model: nn.Module
    masked: nn.Module
    graph: ChannelGraph
    removed: list[int]
    rate: float
    reduction: float
    kept_whole: dict[str, str]

    def summary(self) -> str:
        """Per conv of the input model: filters before -> after, or kept whole and why."""
        before = {n: m for n, m in self.masked.named_modules() if isinstance(m, nn.Conv2d)}
        after = dict(self.model.named_modules())
        lines = [
            f"{len(self.removed)} of {len(self.graph.groups)} channel groups removed (share "
            f"{self.rate:.3f}): {self.reduction:.2f}x fewer MACs"
        ]
        for name, m in before.items():
            why = self.kept_whole.get(name)
            new = after[name].out_channels
            lines.append(
                f"{name:48s} {m.out_channels:5d} -> {new:5d}"
                + (f"  kept whole: {why}" if why else "")
            )
        return "\n".join(lines)


def prune_channels(
    model: nn.Module,
    input_shape: tuple[int, ...],
    flops_reduction: float,
    ignored: tuple[str, ...] | list[str] = (),
    round_to: int = 8,
) -> ChannelPruning:
    """Dependency-aware channel pruning of ``model`` to ``flops_reduction`` x fewer MACs at
    ``input_shape`` (counted on the physically smaller model), by filter L2 norm: within each
    cluster of groups made by the same convs, the same share of the groups with the smallest
    filters (normalised by the conv's mean filter norm) goes, at least one group stays; one share
    for the whole model, found by bisection.  ``ignored``: convs whose filters all stay (heads,
    the stem); their inputs may still shrink.  ``round_to``: clusters of at least ``4 * round_to``
    groups keep a multiple of it (oneDNN and the generated kernels run channel counts such as 61 or
    125 well below the speed of 64 or 128).  ``model`` is not modified."""
    from ..models.flops import count_flops

    if not flops_reduction >= 1:
        raise SparsityError(f"flops_reduction must be >= 1, got {flops_reduction}")
    if not isinstance(round_to, int) or round_to < 1:
        raise SparsityError(f"round_to must be a positive integer, got {round_to!r}")
    work = copy.deepcopy(model).eval()
    graph = ChannelGraph(work, input_shape)
    kept_whole = dict(graph.frozen)
    for name in ignored:
        kept_whole[name] = "ignored"
    ignored_set = set(ignored)
    convs = {n for n, m in work.named_modules() if isinstance(m, nn.Conv2d)}
    unknown = sorted(ignored_set - convs)
    if unknown:
        raise SparsityError(
            f"ignored names no conv of the model: {', '.join(unknown[:3])}; convs are e.g. "
            f"{', '.join(sorted(convs)[:3])}"
        )
    score = _scores(graph, work)
    clusters: dict[frozenset, list[int]] = {}
    for gi, g in enumerate(graph.groups):
        producers = frozenset(n for n, _ in g.producers)
        if producers & ignored_set:
            continue
        clusters.setdefault(producers, []).append(gi)
    for members in clusters.values():
        members.sort(key=lambda gi: score[gi])
    dense = count_flops(work, input_shape).dense_macs
    x = torch.randn(input_shape)
    blocked: set[int] = set()

    def count(n: int, rate: float) -> int:
        drop = min(int(rate * n), n - 1)
        if round_to > 1 and n >= 4 * round_to:
            drop = n - -(-(n - drop) // round_to) * round_to
        return max(drop, 0)

    def attempt(rate: float):
        removed = []
        for members in clusters.values():
            free = [m for m in members if m not in blocked]
            removed += free[: count(len(free), rate)]
        masked = copy.deepcopy(work)
        graph.mask(masked, removed)
        return removed, masked

    def reduction_at(rate: float):
        removed, masked = attempt(rate)
        leaks = graph.leaking(masked, removed, x)
        if leaks:  # their channels are not zero once masked (e.g. a sigmoid): they stay
            log.debug("channel groups kept: %d are not zero once masked", len(leaks))
            blocked.update(leaks)
            removed, masked = attempt(rate)
        shrunk = graph.shrink(masked, removed)
        return dense / count_flops(shrunk, input_shape).dense_macs, removed, masked, shrunk

    top = reduction_at(0.999)[0]
    if top < flops_reduction:
        raise SparsityError(
            f"flops_reduction {flops_reduction} is out of reach: removing all but one channel "
            f"group of every prunable cluster gives {top:.2f}x ({len(kept_whole)} convs keep "
            "their filters: see kept_whole)"
        )
    lo, hi = 0.0, 0.999
    for _ in range(20):
        mid = (lo + hi) / 2
        if reduction_at(mid)[0] >= flops_reduction:
            hi = mid
        else:
            lo = mid
    red, removed, masked, shrunk = reduction_at(hi)
    log.info(
        "channel pruning: %d of %d groups removed (rate %.3f): %.2fx fewer MACs; %d convs keep "
        "their filters (%s)",
        len(removed),
        len(graph.groups),
        hi,
        red,
        len(kept_whole),
        "; ".join(f"{n}: {why}" for n, why in list(kept_whole.items())[:3])
        + (" ..." if len(kept_whole) > 3 else ""),
    )
    return ChannelPruning(shrunk, masked, graph, removed, hi, red, kept_whole)


def _scores(graph: ChannelGraph, model: nn.Module) -> list[float]:
    """Per group: the mean over its producers of the filter's L2 norm / the conv's mean."""
    norms: dict[str, torch.Tensor] = {}
    out = []
    for g in graph.groups:
        vals = []
        for name, i in g.producers:
            if name not in norms:
                w = model.get_submodule(name).weight.detach()
                n = w.flatten(1).norm(dim=1)
                norms[name] = n / n.mean().clamp_min(1e-12)
            vals.append(float(norms[name][i]))
        out.append(sum(vals) / len(vals))
    return out
