"""DeepSparse as a peer: Neural Magic's sparse CPU engine on the same masked models, against ONNX
Runtime on the same files in the same process.

DeepSparse 1.8.0 (the last release that installs; 1.9 is an end-of-life stub) needs its own
environment (Python <= 3.11, its own numpy/onnx pins), so this script imports neither torch nor
edgeguard.  Step 1, in the project's venv, writes the ONNX files (dense weights with the pruned
ones zero: what DeepSparse reads) and edgeguard's own times:

    .venv/bin/python benchmarks/sparse_inference.py --only peers --out runs/bench/peers

Step 2, in a venv with ``pip install deepsparse==1.8.0 onnxruntime``:

    /tmp/ds/bin/python benchmarks/deepsparse_peer.py runs/bench/peers --threads 2

Prints DeepSparse's and ONNX Runtime's median latency per file and the ratio, and writes
``deepsparse.json`` beside the files; the ratio to ORT bridges to edgeguard's ratio to ORT that step
1 measured in its own process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np


def median_ms(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="step 1's --out (holds peers.json and *.onnx)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=11)
    args = ap.parse_args()
    import onnxruntime as ort

    try:
        import deepsparse
    except ImportError as err:
        msg = f"deepsparse is not installed here ({err}); pip install deepsparse==1.8.0"
        raise SystemExit(msg) from err
    peers = json.loads((args.folder / "peers.json").read_text())
    rows = []
    for entry in peers:
        shape = entry["input_shape"]
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        dense = ort.InferenceSession(
            str(args.folder / entry["dense_onnx"]), so, providers=["CPUExecutionProvider"]
        )
        masked = ort.InferenceSession(
            str(args.folder / entry["masked_onnx"]), so, providers=["CPUExecutionProvider"]
        )
        engine = deepsparse.compile_model(
            str(args.folder / entry["masked_onnx"]), batch_size=shape[0], num_cores=args.threads
        )
        feed = {masked.get_inputs()[0].name: x}
        want = masked.run(None, feed)[0]
        got = engine([x])[0]
        err = float(np.abs(got - want).max() / np.abs(want).max())
        t_dense = median_ms(lambda s=dense, f=feed: s.run(None, f), args.repeats)
        t_ds = median_ms(lambda e=engine, x=x: e([x]), args.repeats)
        row = {**entry, "ort_dense_ms": t_dense, "deepsparse_ms": t_ds, "deepsparse_rel_err": err}
        rows.append(row)
        ours = entry["dense_ort_ms"] / entry["compiled_ms"]
        print(
            f"{entry['model']} {entry['scheme']} {entry['reduction']:.2f}x: dense ORT "
            f"{t_dense:.1f} ms, DeepSparse {t_ds:.1f} ms (x{t_dense / t_ds:.2f} dense ORT; "
            f"edgeguard x{ours:.2f} dense ORT in step 1); DeepSparse rel err {err:.1e}",
            flush=True,
        )
    (args.folder / "deepsparse.json").write_text(
        json.dumps(
            {"deepsparse": deepsparse.__version__, "threads": args.threads, "rows": rows}, indent=1
        )
    )


if __name__ == "__main__":
    main()
