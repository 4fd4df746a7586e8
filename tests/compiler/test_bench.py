"""Benchmark helpers: the steady allocator really stops large blocks from being mmap'ed."""

import subprocess
import sys

import pytest

SCRIPT = r"""
import ctypes, torch
from edgeguard.compiler.bench import steady_allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2

def mmapped_blocks_while_holding(nbytes):  # blocks the allocation added (others stay mapped)
    n0 = libc.mallinfo2().hblks
    t = torch.empty(nbytes // 4)
    n = libc.mallinfo2().hblks - n0
    del t
    return n

before = mmapped_blocks_while_holding(64 << 20)
ok = steady_allocator()
after = mmapped_blocks_while_holding(64 << 20)
print(before, ok, after)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator: Linux only")
def test_steady_allocator_serves_large_blocks_from_the_heap():
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120
    )
    if res.returncode != 0 and "mallinfo2" in res.stderr:
        pytest.skip("this libc has no mallinfo2 (glibc < 2.33)")
    assert res.returncode == 0, res.stderr
    before, ok, after = res.stdout.split()
    assert ok == "True"
    assert int(before) == 1  # a 64 MB tensor is mmap'ed by default...
    assert int(after) == 0  # ...and comes from the heap once the allocator is steady


def test_interleaved_times_call_in_turn_after_the_warmup():
    from edgeguard.compiler.bench import interleaved_times

    calls = []
    times = interleaved_times([lambda: calls.append("a"), lambda: calls.append("b")], 3, 2)
    assert calls == ["a", "b"] * 5  # 2 warm-up rounds, then 3 timed, each a then b
    assert [len(t) for t in times] == [3, 3] and all(v >= 0 for t in times for v in t)


def _sparse_inference():
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
    try:
        import sparse_inference
    finally:
        sys.path.pop(0)
    return sparse_inference


def test_torch_then_ort_in_turn_alternates_its_loops_over_rounds(monkeypatch):
    # each round: the torch-side loop (calls in turn), a pause, the ORT loop, a pause
    si = _sparse_inference()
    calls = []
    monkeypatch.setattr(si.time, "sleep", lambda s: calls.append("|"))
    got = si.torch_then_ort(
        [lambda: calls.append("t"), lambda: calls.append("c")],
        [lambda: calls.append("o")],
        repeats=2,
        rounds=3,
        protocol="in-turn",
    )
    first = ["t", "c"] * 4 + ["|"] + ["o"] * 4 + ["|"]  # 2 warm-up rounds, then 2 timed
    later = ["t", "c"] * 3 + ["|"] + ["o"] * 3 + ["|"]  # 1 warm-up round
    assert calls == first + later * 2
    assert len(got) == 3 and all(v >= 0 for v in got)


def test_torch_then_ort_in_blocks_times_each_model_back_to_back_in_flipped_order(monkeypatch):
    si = _sparse_inference()
    calls = []
    monkeypatch.setattr(si.time, "sleep", lambda s: calls.append("|"))
    si.torch_then_ort(
        [lambda: calls.append("t"), lambda: calls.append("c")],
        [lambda: calls.append("o"), lambda: calls.append("e")],
        repeats=2,
        rounds=3,
    )
    # a block: 3 untimed calls (4 in the first round), then 2 timed; odd rounds flip the order
    r0 = ["t"] * 6 + ["c"] * 6 + ["|"] + ["o"] * 6 + ["e"] * 6 + ["|"]
    r1 = ["c"] * 5 + ["t"] * 5 + ["|"] + ["e"] * 5 + ["o"] * 5 + ["|"]
    r2 = ["t"] * 5 + ["c"] * 5 + ["|"] + ["o"] * 5 + ["e"] * 5 + ["|"]
    assert calls == r0 + r1 + r2
    with pytest.raises(ValueError, match="protocol must be one of"):
        si.torch_then_ort([], [], 1, protocol="alone")
