"""Slow end-to-end check (``pytest -m slow``): CUDA protection holds on the demo data.

A small CNN trained on the CUDA-protected demo set must do clearly worse on clean test images
than the same CNN trained on the clean set (the demo's own setting, a fixed key).
"""

from dataclasses import replace

import pytest
import torch

from unlearnable.attacks.training import get_budget
from unlearnable.datasets import DEMO_CLASSES, make_demo_images
from unlearnable.protect.cuda import CudaProtector
from unlearnable.verify import VerifyData, run_verification

from .conftest import FIXED_KEY


def _tensor(images):
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


@pytest.mark.slow
def test_cuda_protection_lowers_accuracy_on_demo_data():
    train, train_labels = make_demo_images(80, seed=0)
    test, test_labels = make_demo_images(26, seed=1)
    clean = _tensor(train)
    protector = CudaProtector(FIXED_KEY, list(DEMO_CLASSES))
    labels = torch.from_numpy(train_labels)
    protected = protector.apply(clean.float() / 255, labels, protector.plan(32, 32))
    protected = protected.mul(255).round().to(torch.uint8)
    data = VerifyData(protected, clean, labels, _tensor(test), torch.from_numpy(test_labels), list(DEMO_CLASSES))
    config = replace(get_budget("quick").config, epochs=8)
    with torch.random.fork_rng():
        result = run_verification(data, ["erm"], "small-cnn", config, [0])
    attack = result.attacks[0]
    clean_acc, protected_acc = attack.summary("clean").peak_mean, attack.summary("protected").peak_mean
    assert clean_acc > 0.25, "the clean baseline must learn the demo task"
    assert attack.per_peak is not None and attack.per_peak > 0.5, (clean_acc, protected_acc)
