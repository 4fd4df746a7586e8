"""PGD adversarial training on digits: more robust than standard training, and resumable."""

import pytest

from edgeguard.attacks import PGD, AttackError
from edgeguard.data import digits
from edgeguard.defenses import AdversarialBatches, adversarial_training, robust_accuracy
from edgeguard.engine import TrainConfig, evaluate, fit, seed_everything
from edgeguard.models import build


@pytest.mark.slow  # PGD adversarial training
def test_adversarial_training_raises_pgd_accuracy(tmp_path):
    train, test = digits(True), digits(False)
    cfg = TrainConfig(epochs=6, lr=3e-3, progress=False)
    seed_everything(0)
    standard = build("digits_cnn")
    fit(standard, train, None, cfg)
    seed_everything(0)
    robust = build("digits_cnn")
    adversarial_training(
        robust, train, None, PGD(eps=0.1, steps=5, seed=None), cfg, checkpoint_dir=tmp_path
    )
    pgd = PGD(eps=0.1, steps=10)
    std_rob, adv_rob = robust_accuracy(standard, test, pgd), robust_accuracy(robust, test, pgd)
    assert adv_rob > std_rob + 0.2, (std_rob, adv_rob)
    assert evaluate(robust, test)["accuracy"] > 0.8  # clean accuracy stays useful
    assert (tmp_path / "last.pt").is_file()  # the engine's resumable checkpoint


def test_adversarial_batches_validate_their_settings():
    with pytest.raises(AttackError, match=r"mix .* must be in \(0, 1\]"):
        AdversarialBatches(PGD(), mix=0)
    with pytest.raises(AttackError, match="must be an edgeguard Attack"):
        AdversarialBatches("pgd")
