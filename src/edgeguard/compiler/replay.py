"""Replaying a compiled forward's kernel calls without the Python around them.

At batch 1 a CIFAR ResNet-18's twenty kernels run 50-160 us each, and the Python between two of
them (module calls, buffer choice, pointer arguments) ran 50-60 us: the kernels had just evicted
the interpreter's own data from the caches.  So the first forward of an input shape (and thread
count) runs as usual while recording, for each run of consecutive kernel layers (a *segment*),
the native calls it makes and the buffer zeroing between them; later forwards of that shape copy
the segment's inputs into the buffers it read when recorded and repeat the calls from one short
loop.

A segment is recorded only where its Python did nothing else: every PyTorch function it called
(seen through a :class:`~torch.overrides.TorchFunctionMode`) is a read of a tensor's metadata,
a view of an existing buffer, or the zeroing of a contiguous range; anything else (a copy, an
indexed write, arithmetic) leaves that segment on the Python path for that shape.  The recorded
buffers are held by the plan, so the compiled model's buffer pool never lends them elsewhere.
"""

from __future__ import annotations

import ctypes
import functools
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.fx.node import map_arg
from torch.overrides import TorchFunctionMode

from . import calls
from .generated import (
    OUTPUT_SLACK,
    BufferPool,
    GeneratedKernelModule,
    has_slack,
    kernel_output,
    plain_empty,
)
from .sparse_conv import SparseConv

PLANS_KEPT = 4  # input shapes whose plan (and buffers) a compiled model keeps
# Replay runs of kernel layers between Python nodes too (not only a whole forward as one chain):
# off, NanoDet (9 runs between concats and upsamplings) ran 1.04-1.05x slower that way, its
# runs' buffers held by their plans (docs/compiler.md, design decisions).
PARTIAL_REPLAY = False

# PyTorch functions that only read metadata or return a view of their input's memory
_READS = frozenset(
    {
        "__get__",
        "data_ptr",
        "dim",
        "numel",
        "size",
        "stride",
        "storage_offset",
        "is_contiguous",
        "untyped_storage",
        "element_size",
        "is_floating_point",
        "__len__",
        "nbytes",
        "_set_grad_enabled",  # torch.no_grad() inside a layer: no data touched
    }
)
_ALLOCS = frozenset({"empty", "empty_strided"})  # fresh memory (what it holds is never read)
_VIEWS = frozenset(
    {"__getitem__", "as_strided", "view", "expand", "unsqueeze", "squeeze", "contiguous"}
)


class Recorder(TorchFunctionMode):
    """The native calls and zeroings of one segment, in order; ``refused`` names the first
    PyTorch function that a replay could not repeat (``None``: the segment replays)."""

    def __init__(self, pool: BufferPool | None = None) -> None:
        super().__init__()
        self.ops: list[tuple] = []
        self.held: list[object] = []  # what the recorded pointers point into, kept alive
        self.refused: str | None = None
        # the pool's buffers the segment used: held only once it is recorded (held now, they
        # would look busy to the pool, and the segment would take more buffers than it does)
        self.pool = pool
        self.pooled: set[int] = set()

    def hold(self, t: torch.Tensor) -> None:
        """Keep the memory of ``t`` (whose pointer a call was given) for the plan."""
        cdata = t.untyped_storage()._cdata
        if self.pool is not None and self.pool.owns(cdata):
            self.pooled.add(cdata)
        else:
            self.held.append(t)

    def kernel(self, fn: Callable, args: tuple, held: tuple = ()) -> None:
        """A native call ``fn(*args)`` (pointers as integers); ``held``: its tensors/kernel."""
        self.ops.append((fn, args))
        self.held.extend(held)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.refused is not None:
            return out
        name = getattr(func, "__name__", repr(func))
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if name == "data_ptr" and first is not None:  # a pointer a kernel call may be given
            self.hold(first)
            return out
        if name in _READS or name in _ALLOCS:
            return out
        if name in _VIEWS and _view_of(out, first) and (name != "contiguous" or out is first):
            return out
        if name == "zero_" and first is not None and not first.numel():
            return out  # nothing to zero
        spans = _zero_spans(first) if name == "zero_" and first is not None else None
        if spans is not None:
            self.ops.append((_ZERO, spans))
            self.hold(first)
            return out
        # a copy between float32 tensors of planes of rows: copy_, or contiguous() of a strided
        # tensor (fresh memory, held by the plan: later replays copy into the same floats)
        copy = None
        if name == "copy_" and len(args) >= 2 and not kwargs:
            copy = (args[0], args[1])
        elif name == "contiguous" and first is not None and out is not first and not kwargs:
            copy = (out, first)
        spans = _copy_spans(*copy) if copy is not None else None
        if spans is not None:
            self.ops.append((_COPY, spans))
            self.hold(copy[0])
            self.hold(copy[1])
            return out
        self.refused = name
        return out


def _zero_spans(t: torch.Tensor) -> tuple[int, int, int, int] | None:
    """A ``t.zero_()`` as rows of contiguous bytes: ``(pointer, row bytes, rows, row stride in
    bytes)``: one row where ``t`` is contiguous, its rows where it is 2-D with contiguous rows;
    None for any other tensor."""
    size = t.element_size()
    if t.is_contiguous():
        return t.data_ptr(), t.numel() * size, 1, 0
    if t.dim() == 2 and t.stride(1) == 1:  # rows a stride apart (a padded output's columns)
        return t.data_ptr(), t.shape[1] * size, t.shape[0], t.stride(0) * size
    return None


def _planes_rows(t: torch.Tensor) -> tuple[int, int] | None:
    """``(plane stride, row stride)`` in elements where ``t`` (2-D or more, last dim contiguous)
    is planes of rows: its leading dims merge into one uniformly strided dim; else None."""
    if t.dim() < 2 or (t.shape[-1] > 1 and t.stride(-1) != 1):
        return None
    plane = None
    for i in range(t.dim() - 3, -1, -1):  # innermost leading dim outwards
        if t.shape[i] == 1:
            continue
        if plane is None:
            plane = t.stride(i)
            inner = t.shape[i]
        elif t.stride(i) != plane * inner:
            return None
        else:
            inner *= t.shape[i]
    return plane or 0, t.stride(-2)


def _copy_spans(dst: object, src: object) -> tuple[int, ...] | None:
    """A ``dst.copy_(src)`` of two float32 CPU tensors of one shape, as planes of rows of
    contiguous floats: ``(dst, src, row bytes, rows, dst row stride, src row stride, planes, dst
    plane stride, src plane stride)`` (pointers and bytes); None for any other copy."""
    if not (isinstance(dst, torch.Tensor) and isinstance(src, torch.Tensor)):
        return None
    if dst.shape != src.shape or dst.dtype != torch.float32 or src.dtype != torch.float32:
        return None
    if dst.device.type != "cpu" or src.device.type != "cpu" or dst.dim() < 2 or not dst.numel():
        return None
    a, b = _planes_rows(dst), _planes_rows(src)
    if a is None or b is None:
        return None
    size = dst.element_size()
    planes = dst.numel() // (dst.shape[-1] * dst.shape[-2])
    return (
        dst.data_ptr(),
        src.data_ptr(),
        dst.shape[-1] * size,
        dst.shape[-2],
        a[1] * size,
        b[1] * size,
        planes,
        a[0] * size,
        b[0] * size,
    )


def _view_of(out: object, t: torch.Tensor | None) -> bool:
    """Whether ``out`` is a tensor in ``t``'s memory (a view, not a copy)."""
    return (
        t is not None
        and isinstance(out, torch.Tensor)
        and out.untyped_storage().data_ptr() == t.untyped_storage().data_ptr()
    )


_ZERO = object()  # an op that zeroes (pointer, bytes, rows, row stride in bytes): rows ranges
_COPY = object()  # a strided copy of planes of rows (see _copy_spans)
_memset = ctypes.memset
_memmove = ctypes.memmove


@dataclass
class Segment:
    """Consecutive kernel layers of the graph: their nodes, the values they read from outside
    (``inputs``) and the values of theirs read after them (``outputs``)."""

    nodes: list[fx.Node]
    inputs: list[fx.Node] = field(default_factory=list)
    outputs: list[fx.Node] = field(default_factory=list)


@dataclass
class SegmentPlan:
    """A recorded segment: the buffers its inputs were recorded in, its calls, its outputs.

    ``moves``: per call, the arguments that point into an input's recorded buffer, as
    ``(argument, input, byte offset)``; a later input that the kernels can read where it lies
    (contiguous float32, 64-byte aligned, and not written over by the segment) is read there,
    the others are copied into the recorded buffer (a detector's inputs to its runs of kernel
    layers are megabytes: copying them cost more than the Python the replay saves)."""

    staged: list[torch.Tensor]
    ops: list[tuple]
    outputs: list[object]
    held: list[object]
    moves: dict[int, list[tuple[int, int, int]]] = field(default_factory=dict)
    fixed: frozenset[int] = frozenset()  # inputs always copied: the segment writes over them
    slack: frozenset[int] = frozenset()  # inputs recorded with zero slack after them
    pooled: set[int] = field(default_factory=set)  # storages of the pool's buffers it uses

    def run(self, inputs: list[torch.Tensor]) -> list[object]:
        ptrs: dict[int, int] = {}
        for i, (buf, x) in enumerate(zip(self.staged, inputs, strict=True)):
            if i not in self.fixed and _readable_in_place(x, buf, i in self.slack):
                if x.data_ptr() != buf.data_ptr():
                    ptrs[i] = x.data_ptr() - buf.data_ptr()
            else:
                buf.copy_(x)
        for k, (fn, args) in enumerate(self.ops):
            if ptrs and k in self.moves:
                args = list(args)
                for j, i, _ in self.moves[k]:
                    if i in ptrs:
                        args[j] += ptrs[i]
            if fn is _ZERO:
                for r in range(args[2]):
                    _memset(args[0] + r * args[3], 0, args[1])
            elif fn is _COPY:
                dst, src, width, rows, drow, srow, planes, dplane, splane = args
                for p in range(planes):
                    for r in range(rows):
                        _memmove(dst + p * dplane + r * drow, src + p * splane + r * srow, width)
            else:
                fn(*args)
        return self.outputs

    @staticmethod
    def find_moves(ops: list[tuple], staged: list[torch.Tensor]) -> dict:
        """``moves`` of :class:`SegmentPlan` for the recorded ``ops`` and input buffers."""
        spans = [(t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for t in staged]
        moves: dict[int, list[tuple[int, int, int]]] = {}
        for k, (_, args) in enumerate(ops):
            for j, a in enumerate(args):
                if isinstance(a, int) and not isinstance(a, bool):
                    for i, (lo, hi) in enumerate(spans):
                        if lo <= a < hi:
                            moves.setdefault(k, []).append((j, i, a - lo))
        return moves


def _plain(x: object) -> bool:
    """Whether ``x`` is a contiguous float32 CPU tensor in no layer's padded buffer: what a run's
    recorded calls can take as an input."""
    return (
        isinstance(x, torch.Tensor)
        and x.dtype is torch.float32
        and x.is_cpu
        and x.is_contiguous()
        and not hasattr(x, "_eg_padded_for")
    )


def _readable_in_place(x: object, buf: torch.Tensor, slack: bool) -> bool:
    """Whether the kernels recorded on ``buf`` can read ``x`` where it lies instead (``slack``:
    ``buf`` had zero slack after it, which they may read: ``x`` must have it too)."""
    return (
        _plain(x)
        and tuple(x.shape) == tuple(buf.shape)
        and x.data_ptr() % 64 == 0
        and (not slack or has_slack(x, OUTPUT_SLACK))
    )


def kernel_module(m: nn.Module) -> bool:
    """Whether ``m``'s CPU forward is a generated kernel with Python around it."""
    return isinstance(m, SparseConv | GeneratedKernelModule)


def segments(gm: fx.GraphModule) -> list[Segment]:
    """Runs of two or more consecutive ``call_module`` nodes of kernel modules, with their
    outside inputs and the values read after them."""
    runs: list[list[fx.Node]] = [[]]
    for node in gm.graph.nodes:
        if node.op == "call_module" and kernel_module(gm.get_submodule(node.target)):
            runs[-1].append(node)
        elif runs[-1]:
            runs.append([])
    found = []
    for nodes in runs:
        if len(nodes) < 2:
            continue
        inside = set(nodes)
        seg = Segment(nodes)
        for node in nodes:
            for arg in node.all_input_nodes:
                if arg not in inside and arg not in seg.inputs:
                    seg.inputs.append(arg)
            if any(user not in inside for user in node.users):
                seg.outputs.append(node)
        found.append(seg)
    return found


def one_run(gm: fx.GraphModule, found: list[Segment] | None = None) -> Segment | None:
    """The graph's only run (of :func:`segments`, or ``found``) where it is the whole graph,
    from its single input to its single output: a forward that can replay as one native call
    (:class:`Chain`); else None."""
    found = segments(gm) if found is None else found
    nodes = list(gm.graph.nodes)
    seg = found[0] if len(found) == 1 else None
    whole = (
        seg is not None
        and nodes[0].op == "placeholder"
        and nodes[-1].op == "output"
        and nodes[1:-1] == seg.nodes
        and seg.inputs == [nodes[0]]
        and nodes[-1].args[0] is seg.nodes[-1]
        and seg.outputs == [seg.nodes[-1]]
    )
    return seg if whole else None


def last_uses(nodes) -> dict[fx.Node, list[fx.Node]]:
    """For each node, the values it is the last reader of."""
    last: dict[fx.Node, fx.Node] = {}
    for node in nodes:
        for arg in node.all_input_nodes:
            last[arg] = node
    frees: dict[fx.Node, list[fx.Node]] = {}
    for arg, node in last.items():
        frees.setdefault(node, []).append(arg)
    return frees


class Replayer:
    """Runs a compiled :class:`~torch.fx.GraphModule` node by node, its segments from plans
    recorded per input shape and thread count (see the module's docstring)."""

    def __init__(self, gm: fx.GraphModule, pool: BufferPool | None = None) -> None:
        self.gm = gm
        self.pool = pool
        self.segments: dict[fx.Node, Segment] | None = None  # found on first use (_analyse)
        self.frees: dict[fx.Node, list[fx.Node]] = {}
        self.one_run: Segment | None = None  # the graph's only run, when it is all of it
        self._steps: dict[fx.Node, tuple] = {}
        self.partial = PARTIAL_REPLAY
        self.plans: dict[tuple, dict[fx.Node, SegmentPlan | None]] = {}
        # whole forwards as one native call, by (input shape, threads): graphs that are one
        # replayed run from their single input to their single output
        self.chains: dict[tuple, Chain] = {}

    def _analyse(self) -> None:
        """Find the graph's runs, the values each node reads last, and whether one run is the
        whole graph (once per graph: :meth:`clear` forgets them)."""
        if self.segments is not None:
            return
        self.segments = {seg.nodes[0]: seg for seg in segments(self.gm)}
        self.frees = last_uses(self.gm.graph.nodes)
        self.one_run = one_run(self.gm, list(self.segments.values()))

    def active(self) -> bool:
        """Whether recording can pay off: partial replay is on, or the graph is one run of
        kernel layers from its single input to its single output (a chain).  Otherwise the
        compiled model never records (a recording forward took other pool buffers than the
        Python path would, and NanoDet's later Python forwards kept them: 6-10 % slower)."""
        self._analyse()
        return self.partial or self.one_run is not None

    def clear(self) -> None:
        """Forget every plan (the graph or the tensors the plans point into changed)."""
        self.plans.clear()
        self.chains.clear()
        self._steps.clear()
        self.segments = self.one_run = None

    def __call__(self, args: tuple) -> object:
        """The graph's output for the positional tensors ``args`` (float32, CPU)."""
        key = (tuple((tuple(a.shape), a.dtype) for a in args), torch.get_num_threads())
        plans = self.plans.get(key)
        if plans is not None and not (self.partial and any(p is not None for p in plans.values())):
            return self.gm(*args)  # nothing replays here: fx's own code is quicker
        record = plans is None
        if record:
            plans = {}
            self._analyse()
        env: dict[fx.Node, object] = {}
        it = iter(args)
        skip: set[fx.Node] = set()
        for node in self.gm.graph.nodes:
            if node in skip:
                continue
            seg = self.segments.get(node)
            if seg is not None:
                inputs = [env[n] for n in seg.inputs]
                plan = self._record(seg, inputs, env) if record else plans[node]
                if record:
                    plans[node] = plan
                elif plan is not None:
                    env.update(zip(seg.outputs, plan.run(inputs), strict=True))
                else:
                    self._run_python(seg, env)
                for n in seg.nodes:  # (after _run_python, which frees as it goes: nothing left)
                    self._free(n, env)
                skip.update(seg.nodes)
                continue
            if node.op == "placeholder":
                env[node] = next(it)
            elif node.op == "output":
                out = map_arg(node.args[0], env.__getitem__)
                break
            else:
                env[node] = self._run(node, env)
                self._free(node, env)
        if record:
            if len(self.plans) >= PLANS_KEPT:
                old = self.plans.pop(next(iter(self.plans)))
                self.chains = {k: c for k, c in self.chains.items() if c.plans is not old}
            # The pool's buffers each run used are held only now: held as each run ended, they
            # looked busy to the later layers of this forward, which then took other buffers,
            # and the layers' buffer sites kept that larger set for good (NanoDet 6-10 % slower
            # on the Python path after such a recording).
            for plan in plans.values():
                if plan is not None and self.pool is not None:
                    plan.held.extend(self.pool.views(plan.pooled))
            chain = self._chain(plans)
            if chain is not None:
                self.chains[(args[0].shape, key[1])] = chain
            elif not self.partial:  # nothing replays: let the pool have the buffers back
                plans = dict.fromkeys(plans)
            self.plans[key] = plans
        return out

    def _chain(self, plans: dict[fx.Node, SegmentPlan | None]) -> Chain | None:
        """The forward as one native call, where the graph is one replayed run from its single
        input to its single tensor output (else None)."""
        plan = plans.get(self.one_run.nodes[0]) if self.one_run is not None else None
        if plan is None:
            return None
        (out,) = plan.outputs
        if not isinstance(out, torch.Tensor) or not out.is_contiguous():
            return None
        return Chain.make(plan, plans)

    def _run_python(self, seg: Segment, env: dict) -> None:
        """``seg``'s layers through their Python, their values into ``env``."""
        for n in seg.nodes:
            env[n] = self._run(n, env)
            self._free(n, env)

    def _free(self, node: fx.Node, env: dict, keep: object = ()) -> None:
        """Drop the values whose last reader is ``node`` (as fx's generated code does): a buffer
        nothing references goes back to the pool for the next layer."""
        for arg in self.frees.get(node, ()):
            if arg not in keep:
                env.pop(arg, None)

    def _run(self, node: fx.Node, env: dict) -> object:
        step = self._steps.get(node)
        if step is None:
            step = self._steps[node] = self._step(node)
        fn, flat, args, kwargs = step
        if flat:  # positional arguments that are nodes or constants, no keywords
            return fn(*[env[a] if isinstance(a, fx.Node) else a for a in args])
        return fn(*map_arg(args, env.__getitem__), **map_arg(kwargs, env.__getitem__))

    def _step(self, node: fx.Node) -> tuple:
        """What running ``node`` calls, worked out once: (callable, flat, args, kwargs)."""
        args, kwargs = node.args, node.kwargs
        if node.op == "call_module":
            fn = self.gm.get_submodule(node.target)
        elif node.op == "call_function":
            fn = node.target
        elif node.op == "call_method":
            name = node.target
            fn = lambda obj, *a, **k: getattr(obj, name)(*a, **k)  # noqa: E731
        elif node.op == "get_attr":
            value = functools.reduce(getattr, node.target.split("."), self.gm)
            fn, args, kwargs = (lambda: value), (), {}
        else:
            raise NotImplementedError(node.op)
        flat = not kwargs and all(
            isinstance(a, fx.Node) or not isinstance(a, tuple | list | dict | slice) for a in args
        )
        return fn, flat, args, kwargs

    def _record(self, seg: Segment, inputs: list, env: dict) -> SegmentPlan | None:
        """Run ``seg`` (its values into ``env``) and return its plan, or ``None`` where it cannot
        be replayed (its inputs are not plain float32 tensors, or its Python did other work)."""
        if not all(_plain(x) for x in inputs):
            self._run_python(seg, env)
            return None
        # recorded on buffers like the inputs: with zero slack after them where the input has it
        # (a kernel output: an unpadded conv then reads it in place, past its end), else without
        # (later inputs may be read where they lie: SegmentPlan.moves)
        slack = frozenset(i for i, x in enumerate(inputs) if has_slack(x, OUTPUT_SLACK))
        staged = [
            (
                kernel_output(tuple(x.shape))
                if i in slack
                else plain_empty(x.numel()).view(x.shape)
            ).copy_(x)
            for i, x in enumerate(inputs)
        ]
        local = dict(zip(seg.inputs, staged, strict=True))
        outputs = set(seg.outputs)
        rec = Recorder(self.pool)
        calls.STATE.recorder = rec
        try:
            with rec:
                for n in seg.nodes:
                    local[n] = self._run(n, local)
                    self._free(n, local, outputs)
        finally:
            calls.STATE.recorder = None
        for n in seg.outputs:
            env[n] = local[n]
        if rec.refused is not None:
            return None
        outputs = [local[n] for n in seg.outputs]
        out_mem = {t.untyped_storage().data_ptr() for t in outputs if isinstance(t, torch.Tensor)}
        fixed = frozenset(  # an output written over an input (a residual sum into it)
            i for i, t in enumerate(staged) if t.untyped_storage().data_ptr() in out_mem
        )
        moves = SegmentPlan.find_moves(rec.ops, staged)
        held = [*rec.held, *outputs]
        # the pool's buffers (rec.pooled) are held once the whole forward is recorded (__call__)
        return SegmentPlan(staged, rec.ops, outputs, held, moves, fixed, slack, rec.pooled)


OP_WORDS = 13  # kernels/chain.cpp: kind, address, 11 argument words
# kernels/chain.cpp's kinds by the kernel's ctypes signature
_KINDS = {
    (ctypes.c_void_p,) * 8 + (ctypes.c_int,) * 2: 1,
    (ctypes.c_void_p,) * 2 + (ctypes.c_int,) * 2: 2,
    (ctypes.c_void_p,) * 4 + (ctypes.c_int,) * 2: 3,
    (ctypes.c_void_p,) * 8 + (ctypes.c_int,) * 2 + (ctypes.c_float,): 4,
}


@functools.cache
def _chain_library():
    """The chain runner (kernels/chain.cpp), built once per target (and cached on disk)."""
    from .cpu import build_many, host_target, load_library
    from .cpu.codegen import template

    (lib,) = build_many([template("chain.cpp")], host_target())
    fn = load_library(lib).edgeguard_chain
    fn.restype = ctypes.c_int
    v, i64 = ctypes.c_void_p, ctypes.c_int64
    fn.argtypes = [v, ctypes.c_int, v, v, i64, v, v, i64, ctypes.c_int]
    return fn


class Chain:
    """A recorded forward run by one call of the chain runner: the input copied into the buffer
    the first kernel reads, the recorded calls, the output copied into a new tensor."""

    def __init__(self, plan: SegmentPlan, plans: dict, ops: torch.Tensor, fn) -> None:
        self.plan, self.plans, self.ops, self.fn = plan, plans, ops, fn
        (self.staged,), (src,) = plan.staged, plan.outputs
        self.shape = tuple(src.shape)
        # the runner's fixed arguments, each an attribute (read once a call)
        self._ops, self._nops = ops.data_ptr(), ops.shape[0]
        self._staged, self._xn = self.staged.data_ptr(), self.staged.numel()
        self._src, self._on = src.data_ptr(), src.numel()

    @classmethod
    def make(cls, plan: SegmentPlan, plans: dict) -> Chain | None:
        """The chain of ``plan``, or None where a call's signature is not one the runner has."""
        rows = []
        for fn, args in plan.ops:
            if fn is _ZERO:
                rows.append([0, 0, *args])
                continue
            if fn is _COPY:
                rows.append([5, 0, *args])
                continue
            kind = _KINDS.get(tuple(fn.argtypes or ()))
            if kind is None or len(args) != len(fn.argtypes):
                return None
            words = [
                struct.unpack("<I", struct.pack("<f", a))[0] if isinstance(a, float) else a or 0
                for a in args
            ]
            rows.append([kind, ctypes.cast(fn, ctypes.c_void_p).value, *words])
        try:
            runner = _chain_library()
        except Exception:  # no chain runner here: the segment replays from Python
            return None
        ops = torch.zeros((len(rows), OP_WORDS), dtype=torch.int64)
        for i, row in enumerate(rows):
            ops[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
        return cls(plan, plans, ops, runner)

    def takes(self, x: torch.Tensor) -> bool:
        """Whether ``x`` (of the recorded shape) can be copied in as it is: contiguous float32 on
        the CPU."""
        return _plain(x)

    def __call__(self, x: torch.Tensor, check: bool) -> torch.Tensor | None:
        """The output for ``x``, or None (nothing run) where ``check`` and ``x`` holds a NaN or
        an Inf."""
        out = torch.empty(self.shape, dtype=torch.float32)
        if self.fn(
            self._ops,
            self._nops,
            x.data_ptr(),
            self._staged,
            self._xn,
            self._src,
            out.data_ptr(),
            self._on,
            check,
        ):
            return None
        return out
