"""Attacks explained end to end: failed samples counted and excluded, figures written."""

import pytest
import torch

from edgeguard.attacks import FGSM, PGD
from edgeguard.explain import HEADERS, ExplainError, explain_attack, explain_attacks


def test_failed_and_misclassified_samples_are_counted_and_excluded(digits_model, digits_batch):
    x, y = digits_batch[0][:30], digits_batch[1][:30].clone()
    y[:3] = (y[:3] + 1) % 10  # three inputs the model now "misclassifies"
    e = explain_attack(digits_model, x, y, FGSM(eps=0.05), "weak FGSM")
    assert e.misclassified == 3 and e.attempted == 27
    assert 0 < e.failed < 27  # a weak attack: some fail
    assert len(e.inputs) == e.succeeded == e.unit.promotion.shape[0] == len(e.pixel.promotion)
    with torch.no_grad():
        assert (digits_model(e.adversarial).argmax(1) != e.labels).all()
    shares = e.category_shares()
    assert abs(sum(shares.values()) - 1) < 1e-6
    assert e.summary()["failed (excluded)"] == e.failed


def test_study_over_attacks_writes_the_figures(digits_model, digits_batch, tmp_path):
    x, y = digits_batch[0][:24], digits_batch[1][:24]
    attacks = {"FGSM": FGSM(eps=0.15), "PGD-10": PGD(eps=0.15, steps=10)}
    study = explain_attacks(digits_model, x, y, attacks, out_dir=tmp_path, progress=False)
    assert [e.attack for e in study.explanations] == ["FGSM", "PGD-10"]
    assert study.explanations[0].cam_layer == "features.6"
    rows = study.rows()
    assert len(rows) == 2 and all(len(r) == len(HEADERS) for r in rows)
    assert "PGD-10" in study.table()
    names = sorted(p.name for p in study.figures.values())
    assert names == [
        "pse_categories.png",
        "pse_maps_fgsm.png",
        "pse_maps_pgd_10.png",
        "pse_units_fgsm.png",
        "pse_units_pgd_10.png",
    ]
    assert all(p.stat().st_size > 5000 for p in study.figures.values())
    for e in study.explanations:  # the pixel maps point where Grad-CAM does more than chance
        assert float(e.overlap_suppression.mean()) > float(e.random_suppression.mean())


def test_an_attack_that_always_fails_is_reported_as_skipped(digits_model, digits_batch):
    x, y = digits_batch[0][:10], digits_batch[1][:10]
    attacks = {"no-op": FGSM(eps=0.0), "PGD": PGD(eps=0.2, steps=10)}
    study = explain_attacks(digits_model, x, y, attacks, progress=False)
    assert [e.attack for e in study.explanations] == ["PGD"]
    assert "failed on all 10 samples" in study.skipped["no-op"]
    assert study.rows()[-1][:2] == ("no-op", study.skipped["no-op"])
    with pytest.raises(ExplainError, match="no attack succeeded"):
        explain_attacks(digits_model, x, y, {"no-op": FGSM(eps=0.0)}, progress=False)
