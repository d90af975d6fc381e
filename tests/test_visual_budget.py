"""The visual-cost budget: the runner weakens a protector's plan per file until the file fits,
flags files that cannot fit, records the final plan and cost, and treats the budget as a
setting of the run (resume)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from unlearnable.errors import UsageError
from unlearnable.io.executors import SerialExecutor
from unlearnable.io.manifest import MANIFEST_NAME, read_manifest
from unlearnable.io.runner import FolderJob, OutputOptions, ProtectUsageError, run_folder


def _smooth_image(seed: int, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (size // 8, size // 8, 3)).astype(np.uint8)
    image = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
    return np.asarray(image)


def _folder(root: Path, files: int = 4) -> Path:
    for index in range(files):
        target = root / ("a" if index % 2 else "b") / f"{index}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_smooth_image(index)).save(target)
    return root


class BlurProtector:
    """A fake protection: a box blur of radius ``plan`` (plans 0..start; 0 = unchanged), plus a
    constant brightness offset ``floor`` that no plan removes (to test a budget that cannot be
    met)."""

    method = "blur-test"

    def __init__(self, start: int = 3, floor: float = 0.0, weakens: bool = True) -> None:
        self.start, self.floor = start, floor
        if not weakens:
            self.weaken = None

    def parameters(self) -> dict:
        return {"start": self.start, "floor": self.floor}

    def plan(self, height: int, width: int) -> int:
        return self.start

    def describe_plan(self, plan: int) -> dict:
        return {"radius": plan}

    def apply(self, images: torch.Tensor, label_ids: torch.Tensor, plan: int) -> torch.Tensor:
        out = images
        if plan > 0:
            size = 2 * plan + 1
            out = F.avg_pool2d(F.pad(images, (plan,) * 4, mode="replicate"), size, stride=1)
        return (out + self.floor).clamp(0, 1)

    def weaken(self, plan: int) -> int | None:
        return plan - 1 if plan > 0 else None


def _job(source: Path, protector) -> FolderJob:
    labels = {p.relative_to(source).as_posix(): p.parent.name for p in source.rglob("*.png")}
    return FolderJob(protector, labels, ["a", "b"], "folders", skipped={})


def _run(source, target, protector, budget=None, resume=False):
    return run_folder(
        source,
        target,
        _job(source, protector),
        key_fingerprint="test",
        options=OutputOptions(max_visual_cost=budget),
        resume=resume,
        executor=SerialExecutor(),
    )


def test_budget_lowers_strength_per_file_and_is_respected(tmp_path):
    source = _folder(tmp_path / "in")
    free = _run(source, tmp_path / "free", BlurProtector())
    costs = {r.path: r.visual_cost for r in free.succeeded}
    budget = float(np.median(list(costs.values()))) * 0.5
    run = _run(source, tmp_path / "budget", BlurProtector(), budget)
    assert len(run.succeeded) == 4
    for record in run.succeeded:
        assert record.visual_cost <= budget and not record.over_budget
        assert record.params["radius"] < 3 and record.weakened == 3 - record.params["radius"]
        assert record.visual_cost < costs[record.path]
    summary = run.manifest.summary
    assert summary["weakened"] == 4 and summary["over_budget"] == 0
    assert summary["max_visual_cost"] <= budget
    # the file written is the one the final plan gives (same as a run that starts there)
    record = run.succeeded[0]
    direct = _run(source, tmp_path / "direct", BlurProtector(start=record.params["radius"]))
    same = next(r for r in direct.succeeded if r.path == record.path)
    assert same.output_sha256 == record.output_sha256
    assert read_manifest(tmp_path / "budget").parameters["output"]["max_visual_cost"] == budget


def test_a_generous_budget_changes_nothing(tmp_path):
    source = _folder(tmp_path / "in")
    free = _run(source, tmp_path / "free", BlurProtector())
    loose = _run(source, tmp_path / "loose", BlurProtector(), budget=1.0)
    assert [r.output_sha256 for r in free.succeeded] == [r.output_sha256 for r in loose.succeeded]
    assert all(r.weakened is None and r.params["radius"] == 3 for r in loose.succeeded)


@pytest.mark.parametrize("weakens", [True, False])
def test_a_file_that_cannot_meet_the_budget_is_written_at_the_weakest_plan_and_flagged(
    tmp_path, weakens
):
    source = _folder(tmp_path / "in", files=2)
    protector = BlurProtector(floor=0.3, weakens=weakens)  # the offset alone exceeds the budget
    run = _run(source, tmp_path / "out", protector, budget=0.001)
    assert len(run.succeeded) == 2 and not run.failed
    weakest = 0 if weakens else 3
    for record in run.succeeded:
        assert record.over_budget is True and record.visual_cost > 0.001
        assert record.params["radius"] == weakest
        assert (tmp_path / "out" / record.output_path).exists()
    assert run.manifest.summary["over_budget"] == 2
    raw = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())
    assert all(r["over_budget"] is True for r in raw["files"])


def test_the_budget_is_a_setting_of_the_run_for_resume(tmp_path):
    source = _folder(tmp_path / "in")
    _run(source, tmp_path / "out", BlurProtector(), budget=0.02)
    with pytest.raises(ProtectUsageError, match="different"):
        _run(source, tmp_path / "out", BlurProtector(), budget=0.03, resume=True)
    with pytest.raises(ProtectUsageError, match="different"):
        _run(source, tmp_path / "out", BlurProtector(), budget=None, resume=True)
    again = _run(source, tmp_path / "out", BlurProtector(), budget=0.02, resume=True)
    assert again.manifest.summary["resumed"] == 4


def test_bad_budget_is_a_usage_error():
    with pytest.raises(UsageError):
        OutputOptions(max_visual_cost=0)
    with pytest.raises(UsageError):
        OutputOptions(max_visual_cost=1.5)


def test_version_1_manifests_still_read(tmp_path):
    source = _folder(tmp_path / "in", files=2)
    _run(source, tmp_path / "out", BlurProtector())
    path = tmp_path / "out" / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["schema_version"] = 1
    for record in data["files"]:
        del record["visual_cost"]
    path.write_text(json.dumps(data))
    manifest = read_manifest(path)
    assert len(manifest.files) == 2 and manifest.files[0].visual_cost is None
    # and a resume continues it (no budget: the same settings)
    again = _run(source, tmp_path / "out", BlurProtector(), resume=True)
    assert again.manifest.summary["resumed"] == 2


def test_cuda_protector_weakens_under_a_budget(tmp_path):
    from unlearnable.keys import SecretKey
    from unlearnable.protect.cuda import CudaProtector

    protector = CudaProtector(SecretKey(bytes(range(32))), ["a", "b"], strength="high")
    if getattr(protector, "weaken", None) is None:
        pytest.skip("CudaProtector.weaken is not there yet")
    source = _folder(tmp_path / "in")
    free = _run(source, tmp_path / "free", protector)
    budget = min(r.visual_cost for r in free.succeeded) * 0.8
    run = _run(source, tmp_path / "budget", protector, budget)
    for record in run.succeeded:
        assert record.visual_cost <= budget or record.over_budget
        assert record.weakened
    assert run.manifest.summary["weakened"] == 4
