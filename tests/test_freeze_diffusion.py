"""FreezeAsGuard's diffusion task on tiny randomly initialised diffusers models (CPU, fp32)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

diffusers = pytest.importorskip("diffusers")

from unlearnable.defenses.freeze import (  # noqa: E402
    DiffusionAdapter,
    DiffusionData,
    DiffusionModel,
    FinetuneConfig,
    FreezeConfig,
    detect_task,
    finetune,
    learn_freeze_mask,
    load_caption_folder,
    load_diffusion_model,
    load_mask,
)
from unlearnable.errors import InputError, ModelFileError  # noqa: E402

from .conftest import random_image  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


def tiny_unet(in_channels: int = 3, sample_size: int = 8):
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
        layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    )  # fmt: skip


def tiny_conditional_unet():
    torch.manual_seed(1)
    return diffusers.UNet2DConditionModel(
        sample_size=4, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=8, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )  # fmt: skip


def tiny_vae():
    torch.manual_seed(2)
    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(4, 8),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=4, sample_size=8,
    )  # fmt: skip


class WordEncoder(nn.Module):
    """A stand-in text encoder: one embedding per hashed word, 4 tokens, width 8."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.table = nn.Embedding(64, 8)

    def forward(self, captions, device):
        words = [(c.split() + ["<pad>"] * 4)[:4] for c in captions]
        ids = [[sum(map(ord, w)) % 64 for w in ws] for ws in words]
        return self.table(torch.tensor(ids, device=device))


def images(n: int, seed: int, size: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g) * 255).to(torch.uint8)


def scheduler():
    return diffusers.DDPMScheduler(num_train_timesteps=100)


QUICK = FreezeConfig(ratio=0.3, steps=4, batch_size=2, relearn_epochs=1)


def test_unconditional_unet_learns_a_mask_and_finetunes_with_it_frozen() -> None:
    model = DiffusionModel(tiny_unet(), scheduler())
    adapter = DiffusionAdapter(seed=0)
    ill, leg = DiffusionData(images(3, 1)), DiffusionData(images(3, 2))
    result = learn_freeze_mask(model, ill, leg, adapter, QUICK)
    names = {n for n, _ in model.unet.named_parameters()}
    assert result.mask.task == "diffusion" and set(result.mask.frozen) <= names
    assert result.mask.share["groups"] == pytest.approx(0.3, abs=0.01)
    assert all(r["illegal_loss"] > 0 and r["legal_loss"] > 0 for r in result.rows)
    before = {n: p.detach().clone() for n, p in model.unet.named_parameters()}
    config = FinetuneConfig(epochs=2, batch_size=2, lr=1e-2, weight_decay=0.5)
    done = finetune(model, result.mask, ill, adapter, config, eval_data=leg)
    after = dict(model.unet.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in result.mask.frozen)
    assert any(not torch.equal(before[n], after[n]) for n in names - set(result.mask.frozen))
    assert done.verified and "eval_loss" in done.history.last


def test_latent_text_conditioned_unet_runs_and_keeps_vae_and_encoder_fixed() -> None:
    vae, encoder = tiny_vae(), WordEncoder()
    model = DiffusionModel(tiny_conditional_unet(), scheduler(), vae=vae, prompt_encoder=encoder)
    assert model.resolution == 8 and model.conditional
    fixed = {
        n: p.detach().clone() for n, p in [*vae.named_parameters(), *encoder.named_parameters()]
    }
    ill = DiffusionData(images(3, 1), ("a red car", "a blue car", "a car"))
    leg = DiffusionData(images(3, 2), ("a cat", "a dog", "a bird"))
    adapter = DiffusionAdapter(seed=0)
    result = learn_freeze_mask(model, ill, leg, adapter, QUICK)
    assert set(result.mask.frozen) <= {n for n, _ in model.unet.named_parameters()}
    finetune(model, result.mask, ill, adapter, FinetuneConfig(epochs=1, batch_size=2))
    now = dict([*vae.named_parameters(), *encoder.named_parameters()])
    assert all(torch.equal(fixed[n], now[n]) for n in fixed)
    with pytest.raises(InputError, match="captions"):
        adapter.loss(model, {"images": torch.rand(2, 3, 8, 8)})


def test_conditional_unet_without_text_encoder_is_refused() -> None:
    with pytest.raises(ModelFileError, match="text encoder"):
        DiffusionModel(tiny_conditional_unet(), scheduler())


def _pipeline_folder(root: Path) -> Path:
    tiny_unet(in_channels=4, sample_size=4).save_pretrained(root / "unet")
    tiny_vae().save_pretrained(root / "vae")
    scheduler().save_pretrained(root / "scheduler")
    index = {
        "_class_name": "LDMPipeline",
        "unet": ["diffusers", "UNet2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    }
    (root / "model_index.json").write_text(json.dumps(index))
    return root


def test_local_pipeline_and_unet_folders_load(tmp_path: Path) -> None:
    pipe = load_diffusion_model(_pipeline_folder(tmp_path / "pipe"))
    assert pipe.vae is not None and pipe.resolution == 8 and not pipe.conditional
    assert pipe.noise_scheduler.config.num_train_timesteps == 100
    tiny_unet().save_pretrained(tmp_path / "unet")
    unet = load_diffusion_model(tmp_path / "unet")
    assert unet.vae is None and unet.resolution == 8
    assert detect_task(tmp_path / "pipe") == "diffusion"
    assert detect_task(tmp_path / "unet") == "diffusion"
    assert detect_task(tmp_path) == "classification"
    with pytest.raises(ModelFileError, match="neither"):
        load_diffusion_model(tmp_path)
    with pytest.raises(ModelFileError, match="allow_download"):
        load_diffusion_model("someone/some-model")


def test_caption_folder(tmp_path: Path) -> None:
    for i in range(3):
        random_image((12, 10), seed=i).save(tmp_path / f"img{i}.png")
        if i < 2:
            (tmp_path / f"img{i}.txt").write_text(f"caption {i}\n")
    with pytest.raises(InputError, match="no caption file"):
        load_caption_folder(tmp_path, 8, captions=True)
    (tmp_path / "img2.txt").write_text("caption 2")
    data = load_caption_folder(tmp_path, 8, captions=True)
    assert data.images.shape == (3, 3, 8, 8) and data.images.dtype == torch.uint8
    assert data.captions == ("caption 0", "caption 1", "caption 2")
    assert load_caption_folder(tmp_path, 8, captions=False).captions is None


def test_cli_freeze_and_finetune_a_unet_folder(runner, tmp_path: Path) -> None:
    from unlearnable.cli import main

    tiny_unet().save_pretrained(tmp_path / "unet")
    for name, seed in (("ill", 0), ("leg", 10)):
        (tmp_path / name).mkdir()
        for i in range(3):
            random_image((8, 8), seed=seed + i).save(tmp_path / name / f"{i}.png")
    args = ["freeze", str(tmp_path / "unet"), "--illegal", str(tmp_path / "ill"), "--legal",
            str(tmp_path / "leg"), "--steps", "4", "--batch-size", "2", "--relearn-epochs", "0",
            "--device", "cpu", "-o", str(tmp_path / "run"), "-q"]  # fmt: skip
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    mask = load_mask(tmp_path / "run")
    assert mask.task == "diffusion" and mask.frozen
    args = ["finetune", str(tmp_path / "unet"), str(tmp_path / "ill"), "--mask",
            str(tmp_path / "run"), "--epochs", "1", "--batch-size", "2", "--device", "cpu",
            "-o", str(tmp_path / "ft"), "--json"]  # fmt: skip
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["frozen_verified"] is True
    tuned = load_diffusion_model(tmp_path / "ft" / "model" / "unet")
    mask.check_release(tuned.unet)
