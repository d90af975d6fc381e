"""The audit: key-based test of "was this model trained on my protected images?"."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from unlearnable.attacks.training import TrainConfig, train_classifier
from unlearnable.audit import (
    STATISTICS,
    AuditClassError,
    AuditConfig,
    AuditMethodError,
    audit_model,
    audit_plan,
    filter_all_classes,
    load_probes,
    null_keys,
    read_class_map,
    verdict_text,
    write_audit_folder,
)
from unlearnable.audit.stats import label_free_values, move_rates, summarize
from unlearnable.cli import main
from unlearnable.datasets import DEMO_CLASSES, make_demo_images
from unlearnable.errors import EXIT_FLAGGED, UsageError
from unlearnable.io.manifest import FileRecord, Manifest
from unlearnable.keys import SecretKey, write_key_file
from unlearnable.protect.cuda import CudaProtector, apply_cuda, cuda_filters, upscale_filters

CLASSES = list(DEMO_CLASSES[:4])
SIZE = 16
KEY_A = SecretKey(bytes([1]) * 32)
KEY_B = SecretKey(bytes([2]) * 32)
NULLS = 19  # smallest p-value 1/20 = 0.05
FAST = AuditConfig(null_keys=NULLS, alpha=0.05)


def as_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def tiny_cnn(seed: int, classes: int = len(CLASSES)) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, classes),
    )


def cuda_manifest(key: SecretKey, classes=CLASSES, method: str = "cuda") -> Manifest:
    protector = CudaProtector(key, classes)
    return Manifest(method, protector.parameters(), key.fingerprint, "folders", list(classes))


class Toy:
    """Synthetic 4-class data at 16 px, protected with key A, and three trained models."""

    def __init__(self) -> None:
        images, labels = make_demo_images(150, size=SIZE, seed=0, classes=tuple(CLASSES))
        probe_images, probe_labels = make_demo_images(20, size=SIZE, seed=1, classes=tuple(CLASSES))
        self.train_x, self.train_y = as_tensor(images), torch.from_numpy(labels)
        self.probes, self.probe_y = as_tensor(probe_images), torch.from_numpy(probe_labels)
        self.probe_names = [CLASSES[i] for i in probe_labels]
        protector = CudaProtector(KEY_A, CLASSES)
        marked = protector.apply(self.train_x.float() / 255, self.train_y, protector.plan(SIZE, SIZE))
        self.protected_x = marked.mul(255).round().to(torch.uint8)
        self.manifest = cuda_manifest(KEY_A)
        self.protected = self.train(self.protected_x, self.train_y)
        self.clean = self.train(self.train_x, self.train_y)
        self.permuted = self.train(self.protected_x, (self.train_y + 1) % len(CLASSES))

    def train(self, images, labels) -> nn.Module:
        model = tiny_cnn(0)
        config = TrainConfig(epochs=6, batch_size=32, lr=0.05, augment=False)
        train_classifier(model, images, labels, self.probes, self.probe_y, config, seed=0)
        return model.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one thread is much faster than two on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy(one_thread) -> Toy:
    return Toy()


def run(toy: Toy, model, key=KEY_A, **changes):
    config = AuditConfig(**{**FAST.__dict__, **changes})
    return audit_model(
        model,
        key,
        toy.manifest,
        toy.probes,
        model_classes=CLASSES,
        probe_labels=toy.probe_names,
        config=config,
    )


# --------------------------------------------------------------------------- the test itself


def test_protected_model_is_flagged_with_its_key_and_not_with_another(toy) -> None:
    with_a = run(toy, toy.protected)
    assert with_a.statistic == "labelled" and with_a.flagged
    assert with_a.p_value == pytest.approx(1 / (NULLS + 1))
    assert with_a.labelled.observed > with_a.labelled.null_mean + 0.3 and with_a.labelled.z > 2
    with_b = run(toy, toy.protected, key=KEY_B, allow_other_key=True)
    assert not with_b.flagged and with_b.p_value > 0.05
    assert any("fingerprint" in note for note in with_b.notes)


def test_clean_model_is_not_flagged(toy) -> None:
    result = run(toy, toy.clean)
    assert not result.flagged and result.p_value > 0.05
    assert result.probes["clean_accuracy"] is not None


def test_early_stopping_keeps_the_verdict_and_saves_keys(toy) -> None:
    config = {"null_keys": 19, "alpha": 0.05, "batch_size": 4096}  # stops at the first key
    for model, key in ((toy.clean, KEY_A), (toy.protected, KEY_A)):
        allow = key is not KEY_A
        full = run(toy, model, key, allow_other_key=allow, **config)
        early = run(toy, model, key, allow_other_key=allow, early_stop=True, **config)
        assert early.flagged == full.flagged
        if full.flagged:
            assert not early.stopped_early and early.to_json() == {
                **full.to_json(), "config": early.to_json()["config"]
            }
        else:
            assert early.stopped_early and early.null_keys_used < 19 and early.p_value > 0.05
            assert early.null_values[early.statistic] == full.null_values[full.statistic][
                : early.null_keys_used
            ]


def test_label_free_statistic_flags_a_model_whose_labels_were_permuted(toy) -> None:
    labelled = run(toy, toy.permuted)
    assert labelled.statistic == "labelled" and not labelled.flagged
    free = run(toy, toy.permuted, statistic="label-free")
    assert free.statistic == "label-free" and free.flagged
    paired = {row.owner_class: row.paired_with for row in free.classes}
    assert sum(paired[c] == CLASSES[(i + 1) % 4] for i, c in enumerate(CLASSES)) >= 3
    # a model whose class names share nothing with the manifest: auto uses the label-free test
    anonymous = audit_model(
        toy.permuted, KEY_A, toy.manifest, toy.probes, model_classes=["p", "q", "r", "s"],
        config=FAST,
    )  # fmt: skip
    assert anonymous.statistic == "label-free" and anonymous.flagged and anonymous.notes


def test_p_value_is_deterministic_for_fixed_model_key_and_seed(toy) -> None:
    first, second = run(toy, toy.protected, key=KEY_B, allow_other_key=True), None
    second = run(toy, toy.protected, key=KEY_B, allow_other_key=True)
    assert first.to_json() == second.to_json()
    other_seed = run(toy, toy.protected, key=KEY_B, allow_other_key=True, seed=1)
    assert other_seed.null_values != first.null_values


def innocent_model(seed: int, probes: torch.Tensor):
    """A fixed random conv net whose logits are standardised on the clean probes (so it spreads
    its answers over the classes and reacts to blur): a model that never saw any mark."""
    generator = torch.Generator().manual_seed(seed)
    conv = torch.randn(8, 3, 3, 3, generator=generator)
    head = torch.randn(4, 8 * 4 * 4, generator=generator)

    def logits(images: torch.Tensor) -> torch.Tensor:
        hidden = nn.functional.conv2d(images, conv, padding=1).relu()
        return nn.functional.adaptive_avg_pool2d(hidden, 4).flatten(1) @ head.T

    reference = logits(probes)
    mean, std = reference.mean(0), reference.std(0)
    return lambda images: (logits(images) - mean) / std


def test_p_values_are_uniform_for_a_model_that_never_saw_the_marks() -> None:
    """Calibration: for an innocent model the owner's key is one random key among J + 1, so
    P(p <= m / (J + 1)) is m / (J + 1) (less with ties). 100 owner keys, innocent models."""
    probes = as_tensor(make_demo_images(12, size=8, seed=5, classes=tuple(CLASSES))[0])
    floats = probes.float() / 255
    models = [innocent_model(seed, floats) for seed in range(3)]
    p_values = []
    for index in range(100):
        material = hmac.new(b"calibration", str(index).encode(), hashlib.sha256).digest()
        owner = SecretKey(material)
        result = audit_model(
            models[index % 3], owner, cuda_manifest(owner), probes, model_classes=CLASSES,
            config=AuditConfig(null_keys=NULLS, alpha=0.05, batch_size=4096),
        )  # fmt: skip
        p_values.append(result.p_value)
    p = np.array(p_values)
    assert (p <= 0.05).sum() <= 100 * 0.05 + 3 * np.sqrt(100 * 0.05 * 0.95)
    grid = np.arange(1, NULLS + 2) / (NULLS + 1)
    ecdf = np.array([(p <= g + 1e-9).mean() for g in grid])
    assert np.all(ecdf <= grid + 0.13), ecdf  # never (much) more small p-values than uniform
    assert np.all(ecdf >= grid - 0.2), ecdf  # and not hopelessly conservative


def test_label_free_statistic_is_calibrated_too() -> None:
    rng = np.random.default_rng(0)
    p_values = []
    for _ in range(200):
        preds = rng.integers(0, 4, size=(NULLS + 1, 4, 30))
        clean = rng.integers(0, 4, size=30)
        rates = move_rates(preds, clean, np.full(30, -1), 4)
        p_values.append(summarize(label_free_values(rates)).p_value)
    assert (np.array(p_values) <= 0.05).mean() < 0.05 + 3 * np.sqrt(0.05 * 0.95 / 200)


# --------------------------------------------------------------------------- CUDA plans


@pytest.mark.parametrize("upscale", [1, 2, 3])
def test_marks_equal_the_protection(upscale: int) -> None:
    images = torch.rand(5, 3, 12, 10)
    bank = upscale_filters(cuda_filters(KEY_A, CLASSES, 3, 0.3), upscale)
    marked = filter_all_classes(images, bank)
    assert marked.shape == (4, 5, 3, 12, 10)
    for c in range(4):
        expected = apply_cuda(images, torch.full((5,), c), bank)
        torch.testing.assert_close(marked[c], expected.mul(255).round().div(255), atol=1 / 255 + 1e-6, rtol=0)
        assert (marked[c] - expected).abs().mean() < 1e-3


def test_cuda_plan_follows_the_manifest_records_at_the_probe_size() -> None:
    manifest = cuda_manifest(KEY_A)
    fallback = audit_plan(manifest, 224)
    assert (fallback.kernel_size, fallback.blur, fallback.upscale) == (9, 0.06, 1)
    assert "presets" in fallback.source

    def record(i, side, k, blur, upscale):
        return FileRecord(f"{i}.png", "ok", "circle", width=side, height=side + 10,
                          params={"kernel_size": k, "blur": blur, "upscale": upscale})  # fmt: skip

    manifest.files = [record(i, 1000, 9, 0.06, 4) for i in range(3)] + [record(9, 32, 3, 0.3, 1)]
    plan = audit_plan(manifest, 224)  # 1000 px files, 4x upscaled filter, seen at 224 px
    assert (plan.kernel_size, plan.blur, plan.upscale) == (9, 0.06, 1)
    manifest.files = [record(i, 32, 3, 0.3, 1) for i in range(3)]
    plan = audit_plan(manifest, 64)  # CIFAR-size files upscaled 2x by the scraper
    assert (plan.kernel_size, plan.blur, plan.upscale) == (3, 0.3, 2)
    assert plan.describe()["source"].startswith("the plan of 3 of 3")


def test_null_keys_are_public_reproducible_and_independent_of_the_owner() -> None:
    first = null_keys(0, 5)
    assert [k.material for k in first] == [k.material for k in null_keys(0, 5)]
    assert {k.material for k in first}.isdisjoint({k.material for k in null_keys(1, 5)})
    documented = hmac.new(b"unlearnable/audit/null-key/v1", b"seed=0/index=3", hashlib.sha256)
    assert first[3].material == documented.digest()
    skipped = null_keys(0, 3, exclude=first[0])
    assert first[0].material not in {k.material for k in skipped}


# --------------------------------------------------------------------------- errors


def test_other_methods_are_refused_clearly() -> None:
    probes = torch.rand(4, 3, 8, 8)
    for method, words in (("uc", "Unlearnable Clusters"), ("plaid-noise", "unknown")):
        manifest = cuda_manifest(KEY_A, method=method)
        with pytest.raises(AuditMethodError, match=words) as info:
            audit_model(lambda x: torch.zeros(len(x)), KEY_A, manifest, probes, config=FAST)
        assert "supports: cuda" in str(info.value)
        assert isinstance(info.value, UsageError)


def test_unknown_classes_and_bad_class_maps_are_clear_errors(tmp_path) -> None:
    probes = torch.rand(4, 3, 8, 8)

    def predict(images):
        return torch.zeros(len(images), dtype=torch.long)

    partly = [*CLASSES[:2], "dog", "cat"]
    with pytest.raises(AuditClassError, match="without a class in the model: triangle, cross"):
        audit_model(predict, KEY_A, cuda_manifest(KEY_A), probes, model_classes=partly, config=FAST)
    with pytest.raises(AuditClassError, match="without a class"):
        audit_model(predict, KEY_A, cuda_manifest(KEY_A), probes, model_classes=["a", "b"],
                    config=AuditConfig(null_keys=NULLS, alpha=0.05, statistic="labelled"))  # fmt: skip
    bad_map = tmp_path / "map.csv"
    bad_map.write_text("owner,model\ncircle,a\nhexagon,b\n")
    with pytest.raises(AuditClassError, match="hexagon"):
        audit_model(predict, KEY_A, cuda_manifest(KEY_A), probes, model_classes=["a", "b"],
                    class_map=bad_map, config=FAST)  # fmt: skip
    good_map = tmp_path / "good.csv"
    good_map.write_text("circle,a\nsquare,a\ntriangle,b\ncross,B\n")
    assert read_class_map(good_map)["cross"] == "B"
    result = audit_model(predict, KEY_A, cuda_manifest(KEY_A), probes, model_classes=["a", "b"],
                         class_map=good_map, config=FAST)  # fmt: skip
    assert result.statistic == "labelled" and result.class_match["how"] == "map"
    with pytest.raises(UsageError, match="did not make this protection"):
        audit_model(predict, KEY_B, cuda_manifest(KEY_A), probes, config=FAST)
    with pytest.raises(UsageError, match="at least 99 null keys"):
        AuditConfig(null_keys=50, alpha=0.01)


# --------------------------------------------------------------------------- reports and CLI


def write_probe_folder(toy: Toy, root: Path) -> Path:
    for index, (image, name) in enumerate(zip(toy.probes, toy.probe_names, strict=True)):
        (root / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / name / f"{index:03d}.png")
    return root


def save_torchscript(model: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still read
        torch.jit.save(torch.jit.trace(model.eval(), torch.rand(2, 3, SIZE, SIZE)), str(path))
    return path


def key_forms(key: SecretKey) -> list[bytes]:
    material = key.material
    return [material, material.hex().encode(), material.hex().upper().encode(),
            base64.b64encode(material), base64.b64encode(material).rstrip(b"=")]  # fmt: skip


def test_cli_exit_codes_run_folder_and_the_key_never_appears(toy, tmp_path, runner) -> None:
    key_file = tmp_path / "secret.bin"
    write_key_file(key_file, KEY_A)
    toy.manifest.write(tmp_path)
    manifest = tmp_path / "unlearnable-manifest.json"
    probes = write_probe_folder(toy, tmp_path / "probes")
    common = ["--key", str(key_file), "--manifest", str(manifest), "--probe", str(probes),
              "--classes", ",".join(CLASSES), "--input-size", str(SIZE),
              "--null-keys", str(NULLS), "--alpha", "0.05", "--device", "cpu"]  # fmt: skip

    protected = save_torchscript(toy.protected, tmp_path / "protected.pt")
    flagged = runner.invoke(main, ["audit", str(protected), *common, "-o", str(tmp_path / "r1")])
    assert flagged.exit_code == EXIT_FLAGGED, flagged.output
    assert "EVIDENCE" in flagged.output and "does not show" in flagged.output
    folder = tmp_path / "r1"
    for name in ("config.json", "report.json", "report.md", "classes.csv", "null.csv",
                 "null-distribution.png"):  # fmt: skip
        assert (folder / name).is_file(), name
    report = json.loads((folder / "report.json").read_text())
    assert report["schema"] == "unlearnable.audit-report" and report["flagged"] is True
    assert report["key_fingerprint"] == KEY_A.fingerprint
    assert len(report["classes"]) == 4

    clean = save_torchscript(toy.clean, tmp_path / "clean.pt")
    as_json = runner.invoke(main, ["audit", str(clean), *common, "-o", str(tmp_path / "r2"), "--json"])
    assert as_json.exit_code == 0, as_json.output
    def refuse(constant):
        raise AssertionError(f"not strict JSON: {constant}")

    data = json.loads(as_json.output, parse_constant=refuse)
    assert data["flagged"] is False and data["p_value"] > 0.05

    outputs = [flagged.output.encode(), as_json.output.encode()]
    outputs += [p.read_bytes() for p in tmp_path.glob("r*/*") if p.is_file()]
    for blob in outputs:
        for form in key_forms(KEY_A):
            assert form not in blob


def test_cli_usage_errors_exit_2(toy, tmp_path, runner) -> None:
    key_file = tmp_path / "secret.bin"
    write_key_file(key_file, KEY_A)
    cuda_manifest(KEY_A, method="uc").write(tmp_path)
    probes = write_probe_folder(toy, tmp_path / "probes")
    model = save_torchscript(toy.clean, tmp_path / "m.pt")
    args = ["audit", str(model), "--key", str(key_file), "--manifest", str(tmp_path),
            "--probe", str(probes), "--classes", ",".join(CLASSES), "--input-size", str(SIZE)]  # fmt: skip
    result = runner.invoke(main, args)
    assert result.exit_code == 2 and "cannot test a manifest of method 'uc'" in result.output
    assert runner.invoke(main, ["audit", str(model)]).exit_code == 2
    assert runner.invoke(main, [*args, "--null-keys", "10"]).exit_code == 2


def test_library_report_and_probe_loading(toy, tmp_path) -> None:
    folder = write_probe_folder(toy, tmp_path / "probes")
    (folder / "broken.png").write_bytes(b"not an image")
    loaded = load_probes(folder, SIZE, labels="none")
    assert loaded.images.shape == (80, 3, SIZE, SIZE) and loaded.labels is None
    assert "broken.png" in loaded.skipped
    subset = load_probes(folder, SIZE, labels="folders", max_images=30, seed=3)
    assert len(subset.files) <= 30 and set(subset.labels) <= set(CLASSES)
    assert subset.files == load_probes(folder, SIZE, "folders", max_images=30, seed=3).files
    result = run(toy, toy.protected)
    assert "does not show" in verdict_text(result)
    write_audit_folder(result, tmp_path / "run")
    markdown = (tmp_path / "run" / "report.md").read_text()
    assert "EVIDENCE" in markdown and "| circle |" in markdown


def test_cli_statistic_choices_match_the_library() -> None:
    import importlib

    cli_audit = importlib.import_module("unlearnable.cli.audit")
    assert tuple(cli_audit.STATISTICS) == tuple(STATISTICS)


@pytest.mark.slow
def test_calibration_on_a_model_trained_with_another_key(toy) -> None:
    """A model that learned key A's marks perfectly is innocent for every other key: audits
    with 40 random owner keys flag about alpha of them."""
    p_values = []
    for index in range(40):
        owner = SecretKey(hmac.new(b"other", str(index).encode(), hashlib.sha256).digest())
        result = audit_model(toy.protected, owner, cuda_manifest(owner), toy.probes,
                             model_classes=CLASSES, config=FAST)  # fmt: skip
        p_values.append(result.p_value)
    assert (np.array(p_values) <= 0.05).sum() <= 6
