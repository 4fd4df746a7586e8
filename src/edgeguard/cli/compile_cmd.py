"""``edgeguard compile``: compile a pruned model to fast sparse code, and time it."""

from __future__ import annotations

from ..errors import UsageError
from .common import FRACTION, int_in, shape_arg


def add_parser(sub) -> None:
    p = sub.add_parser("compile", help="compile a pruned model to fast sparse code, and time it")
    p.add_argument("checkpoint", help="model.safetensors written by prune")
    p.add_argument("--backend", default="auto", choices=["auto", "cpu", "cuda", "torch"])
    p.add_argument("--input-shape", type=shape_arg, help="e.g. 1,3,16,112,112 (batch included)")
    p.add_argument(
        "--bench",
        action="store_true",
        help="per-layer and end-to-end latency (dense vs compiled; glibc then keeps freed "
        "memory instead of mmap'ing large blocks, for a stable dense baseline)",
    )
    p.add_argument(
        "--repeats", type=int_in(1), default=10, help="timed runs per measurement (median)"
    )
    p.add_argument("--threads", type=int_in(1), help="CPU threads (default: PyTorch's)")
    p.add_argument(
        "--max-density",
        type=FRACTION,
        help="layers denser than this stay dense (default: 0.8, and on the CPU lowered too "
        "where the forward is then one run of kernels)",
    )
    p.add_argument("--onnx", metavar="OUT", help="also export the compiled model to ONNX")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..compiler import compile_model
    from ..modelfile import load_model

    model, _, spec = load_model(args.checkpoint)
    model.eval()
    shape = args.input_shape or tuple(spec.get("extra", {}).get("input_shape") or ())
    if not shape:
        raise UsageError("the checkpoint records no input shape; pass --input-shape 1,3,16,112,112")
    if args.threads:
        torch.set_num_threads(args.threads)
    compiled = compile_model(
        model, args.backend, input_shape=tuple(shape), max_density=args.max_density
    )
    print(compiled.summary())
    x = torch.randn(*shape)
    with torch.no_grad():
        ref = model(x)
        out = compiled(x.to("cuda" if compiled.backend == "cuda" else "cpu")).cpu()
    err = float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
    print(f"max relative error against the masked model: {err:.2e}")
    if args.bench:
        from ..compiler.bench import benchmark, steady_allocator

        # a stable dense baseline: no page faults on each large output (see steady_allocator)
        steady_allocator()
        print(f"threads: {torch.get_num_threads()}")
        print(benchmark(model, compiled, tuple(shape), repeats=args.repeats).table())
    if args.onnx:
        from ..compiler.onnx_export import export_onnx

        path = export_onnx(compiled, args.onnx, tuple(shape))
        print(f"ONNX written to {path}")
        try:
            import onnxruntime as ort
        except ImportError:
            print("onnxruntime is not installed: the ONNX file was not checked")
        else:
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            y = torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])
            err = float((y - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
            print(f"ONNX Runtime max relative error against the masked model: {err:.2e}")
    return 0
