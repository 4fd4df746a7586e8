"""The demo's detector section: CenterNet pruned, distilled and compiled on a few photos, its table
in the report; skipped with the reason when the weights or photos are absent."""

from __future__ import annotations

from dataclasses import replace

import pytest

from edgeguard.demo import QUICK
from edgeguard.demo.detectors import detectors_section
from edgeguard.models.detectors import weights as detector_weights
from edgeguard.report import Report


@pytest.mark.slow  # 25 s: prune_detector and the compiler have their own fast tests
@pytest.mark.skipif(
    not detector_weights.available(),
    reason=f"the COCO detector weights are not under {detector_weights.models_dir()} (make models)",
)
def test_the_section_reports_ap_and_speed_of_the_pruned_detector(tmp_path, shared_data):
    settings = replace(QUICK, persons_root=str(shared_data("persons")))
    rep = Report("t")
    detectors_section(settings, tmp_path, rep, quick=True)
    html = rep.save(tmp_path / "r.html").read_text()
    assert "CenterNet" in html and "Skipped" not in html
    assert "KGS 1.5x + distillation" in html and "one-shot (speed only)" in html
    assert "as a person detector" in html and "re-solved layer by layer on 2 photos" in html
    assert "person AP50 on 2 held-out photos" in html


def test_the_section_says_why_it_is_skipped_without_photos(tmp_path):
    rep = Report("t")
    settings = replace(QUICK, persons_root=str(tmp_path / "nowhere"))
    detectors_section(settings, tmp_path, rep, quick=True)
    html = rep.save(tmp_path / "r.html").read_text()
    assert "Skipped" in html
