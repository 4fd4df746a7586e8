"""Compiled models off the KGS/ResNet path: filter and vanilla pruning (convs too dense to pay off
alone), CIFAR ResNet-18 with the head as kuangliu/pytorch-cifar writes it, MobileNetV2 (depthwise
convs, ReLU6, residual sums without a ReLU).  Each against dense torch and dense ONNX Runtime in
the same process (the protocol of ``sparse_inference.py --only e2e2d``), with whether its forward
replays as one native call.

    .venv/bin/python benchmarks/off_path.py --threads 2 --repeats 15 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from datetime import date
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from edgeguard.compiler import compile_model
from edgeguard.compiler.bench import steady_allocator
from edgeguard.models import build, count_flops
from edgeguard.models.vision import ResNetCifar
from edgeguard.sparsity import get_scheme, prune_model
from sparse_inference import export_plain, ort_session, torch_then_ort


class KuangliuResNet18(ResNetCifar):
    """CIFAR ResNet-18 whose head is spelled ``F.avg_pool2d(out, 4)``, ``out.view(out.size(0),
    -1)``, as kuangliu/pytorch-cifar (the CIFAR ResNet most code starts from) writes it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(out, 4)
        return self.fc(out.view(out.size(0), -1))


CASES = [  # what, model name, scheme, MAC reduction, batches
    ("filter pruning (shrunk dense convs)", "resnet18_cifar", "filter", 3.0, (1, 32)),
    ("vanilla pruning (first conv too dense)", "vgg16_cifar", "vanilla", 3.0, (1,)),
    ("head as kuangliu/pytorch-cifar writes it", "kuangliu_resnet18", "kgs", 3.0, (1,)),
    ("depthwise convs, ReLU6", "mobilenet_v2_cifar", "kgs", 2.0, (1, 32)),
]


def make(name: str) -> torch.nn.Module:
    return KuangliuResNet18() if name == "kuangliu_resnet18" else build(name, num_classes=10)


def run(repeats: int, rounds: int, threads: int) -> list[dict]:
    rows = []
    for what, name, scheme, target, batches in CASES:
        torch.manual_seed(0)
        dense = make(name).eval()
        for m in dense.modules():  # BN statistics away from the identity (folding matters)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.uniform_(-0.2, 0.2)
        model = make(name).eval()
        model.load_state_dict(dense.state_dict())
        prune_model(model, get_scheme(scheme), flops_reduction=target, input_shape=(1, 3, 32, 32))
        red = count_flops(model, (1, 3, 32, 32)).reduction
        for batch in batches:
            shape = (batch, 3, 32, 32)
            x = torch.randn(*shape)
            comp = compile_model(model, "cpu", input_shape=shape)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "dense.onnx"
                export_plain(dense, x, path)
                sess = ort_session(path, threads)
                feed = {"input": x.numpy()}
                with torch.no_grad():
                    ref = model(x)
                    for _ in range(3):  # Python path, recording, replayed
                        got = comp(x)
                    err = float((got - ref).abs().max() / ref.abs().max())
                    t_dense, t_comp, t_ort = torch_then_ort(
                        [partial(dense, x), partial(comp, x)],
                        [partial(sess.run, None, feed)],
                        repeats,
                        rounds,
                    )
            one_call = bool(comp._replayer is not None and comp._replayer.chains)
            row = {
                "case": what,
                "model": name,
                "scheme": scheme,
                "batch": batch,
                "reduction": red,
                "dense_torch_ms": t_dense,
                "dense_ort_ms": t_ort,
                "compiled_ms": t_comp,
                "one_native_call": one_call,
                "rel_err": err,
            }
            rows.append(row)
            print(
                f"{name} {scheme} {red:.2f}x batch {batch}: dense torch {t_dense:.2f} ms, dense "
                f"ORT {t_ort:.2f}, compiled {t_comp:.2f} (x{t_dense / t_comp:.2f} torch, "
                f"x{t_ort / t_comp:.2f} ORT), one native call {one_call}, err {err:.1e}",
                flush=True,
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="runs/bench/off_path")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steady = steady_allocator()
    print(f"machine: {platform.machine()}, threads {args.threads}, torch {torch.__version__}")
    rows = run(args.repeats, args.rounds, args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "date": date.today().isoformat(),
        "threads": args.threads,
        "steady_allocator": steady,
        "rows": rows,
    }
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
