"""The demo run: its sections in order, one report."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..engine import seed_everything
from ..report import Report
from . import attack, compile, detectors, explain, graph, methods, pruning, tshirt
from .settings import QUICK, DemoContext, DemoSettings

log = logging.getLogger(__name__)

# each section(ctx) adds to the report; later ones may use what earlier ones put in ctx.made
SECTIONS = (pruning, compile, methods, attack, explain, graph, tshirt, detectors)


def run_demo(
    out_dir: str | Path = "runs/demo", quick: bool = False, settings: DemoSettings | None = None
) -> Path:
    """Run the demo and return the path of ``report.html`` in ``out_dir``."""
    quick = quick or settings is QUICK
    s = settings or (QUICK if quick else DemoSettings())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = DemoContext(s, out, Report("edgeguard demo"), quick)
    ctx.made["t_start"] = time.perf_counter()
    seed_everything(s.seed)
    took = []
    for section in SECTIONS:
        t0 = time.perf_counter()
        section.section(ctx)
        took.append(f"{section.__name__.rsplit('.', 1)[-1]} {time.perf_counter() - t0:.0f} s")
    path = ctx.report.save(out / "report.html")
    log.info(
        "demo finished in %.0f s (%s)", time.perf_counter() - ctx.made["t_start"], ", ".join(took)
    )
    return path
