"""The diffusion task of FreezeAsGuard: denoising (epsilon-prediction) loss of a diffusers UNet.

Needs the optional ``diffusers`` package (``pip install "unlearnable[diffusion]"``); it is
imported only when a diffusion model is built or loaded. The mask names the UNet's tensors;
the VAE and the text encoder are never trained.

The loss of a batch of images ``x`` (float ``(B, 3, S, S)`` in [0, 1]) with captions ``c``::

    z = vae.encode(2x - 1).sample() * scaling_factor     (or z = 2x - 1 without a VAE)
    t ~ U{0 .. num_train_timesteps - 1},  eps ~ N(0, I)
    loss = mean || target - unet(add_noise(z, eps, t), t, text_encoder(tokenize(c))) ||^2

with ``target = eps`` (``prediction_type="epsilon"``), the velocity (``"v_prediction"``) or
``z`` (``"sample"``), as the noise scheduler's config says. Noise and timesteps come from the
adapter's own generator (seeded), so runs are repeatable.

Models (:func:`load_diffusion_model`): a local pipeline folder (``model_index.json`` with
``unet``, optionally ``vae``, ``text_encoder`` + ``tokenizer`` (these need ``transformers``) and
``scheduler``), or a UNet folder (``config.json`` of a ``UNet2DModel`` / ``UNet2DConditionModel``,
with an optional ``scheduler_config.json``). A hub id is downloaded only with
``allow_download=True``. Data (:func:`load_caption_folder`): images with same-stem ``.txt``
captions (``a.png`` + ``a.txt``), the common fine-tuning layout; images alone for an
unconditional UNet.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError, ModelFileError, UsageError
from ..training.modes import kept_modes
from .freeze_adapters import TASKS, TaskAdapter

INSTALL_HINT = 'the diffusion task needs diffusers: pip install "unlearnable[diffusion]"'

PromptEncoder = Callable[[Sequence[str], torch.device], Tensor]
"""``(captions, device) -> (B, L, D)`` float conditioning for a conditional UNet."""


def require_diffusers() -> Any:
    """The ``diffusers`` module, or a ``UsageError`` saying how to install it."""
    try:
        import diffusers
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return diffusers


class ClipPromptEncoder(nn.Module):
    """A pipeline's tokenizer + text encoder (``transformers``) as a :data:`PromptEncoder`."""

    def __init__(self, tokenizer: Any, text_encoder: nn.Module) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder

    @torch.no_grad()
    def forward(self, captions: Sequence[str], device: torch.device) -> Tensor:  # noqa: D102
        ids = self.tokenizer(
            list(captions),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        return self.text_encoder(ids)[0].float()


class DiffusionModel(nn.Module):
    """A UNet to fine-tune, with what its loss needs: the noise scheduler, an optional VAE
    (latent diffusion) and an optional prompt encoder (text conditioning). Only the UNet's
    parameters require gradients; the VAE and the prompt encoder stay in eval mode.

    ``resolution``: the image side S the data is resized to (default: the UNet's
    ``sample_size``, times the VAE's downsampling factor when there is a VAE).
    """

    def __init__(
        self,
        unet: nn.Module,
        noise_scheduler: Any,
        vae: nn.Module | None = None,
        prompt_encoder: PromptEncoder | None = None,
        resolution: int | None = None,
    ) -> None:
        super().__init__()
        self.unet = unet.float()
        self.vae = None if vae is None else vae.float().requires_grad_(False)
        self.prompt_encoder = prompt_encoder
        if isinstance(prompt_encoder, nn.Module):
            prompt_encoder.float().requires_grad_(False)
        self.noise_scheduler = noise_scheduler
        self.conditional = "encoder_hidden_states" in inspect.signature(unet.forward).parameters
        if self.conditional and prompt_encoder is None:
            raise ModelFileError(
                "this UNet is text-conditioned but no text encoder was given: load a pipeline "
                "folder with tokenizer/ and text_encoder/ (needs transformers), or pass "
                "prompt_encoder="
            )
        self.resolution = int(resolution or self._default_resolution())
        self.train(False)

    def _default_resolution(self) -> int:
        size = getattr(self.unet.config, "sample_size", None)
        if isinstance(size, (list, tuple)):
            size = size[0]
        if size is None:
            raise UsageError("the UNet's config has no sample_size; pass resolution=")
        if self.vae is not None:
            size *= 2 ** (len(self.vae.config.block_out_channels) - 1)
        return int(size)

    def train(self, mode: bool = True) -> DiffusionModel:
        """Train mode applies to the UNet only."""
        self.training = mode
        self.unet.train(mode)
        if self.vae is not None:
            self.vae.eval()
        if isinstance(self.prompt_encoder, nn.Module):
            self.prompt_encoder.eval()
        return self

    @torch.no_grad()
    def encode_images(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """``(B, 3, S, S)`` float [0, 1] -> what the UNet denoises (latents or [-1, 1] pixels)."""
        x = images.float() * 2.0 - 1.0
        if self.vae is None:
            return x
        latents = self.vae.encode(x).latent_dist.sample(generator=generator)
        shift = getattr(self.vae.config, "shift_factor", None)
        if shift is not None:
            latents = latents - shift
        return latents * self.vae.config.scaling_factor

    def encode_prompts(self, captions: Sequence[str], device: torch.device) -> Tensor:
        assert self.prompt_encoder is not None
        with torch.no_grad():
            return self.prompt_encoder(captions, device)


@dataclass(frozen=True)
class DiffusionData:
    """Images uint8 ``(N, 3, S, S)`` (or float in [0, 1]) and one caption per image (``None``
    for an unconditional model)."""

    images: Tensor
    captions: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise UsageError("images must be (N, 3, S, S)")
        if self.captions is not None:
            object.__setattr__(self, "captions", tuple(str(c) for c in self.captions))
            if len(self.captions) != self.images.shape[0]:
                raise UsageError(f"{self.images.shape[0]} images but {len(self.captions)} captions")


class _DiffusionBatches:
    """Shuffled ``{"images", "captions"}`` batches, float images in [0, 1] (random flips)."""

    def __init__(self, data, batch_size, device, generator, flip: bool) -> None:
        self.data, self.batch_size, self.device = data, batch_size, device
        self.generator, self.flip = generator, flip

    def __len__(self) -> int:
        return -(-self.data.images.shape[0] // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from ..training.classification import to_float_images

        n = self.data.images.shape[0]
        perm = torch.randperm(n, generator=self.generator)
        for start in range(0, n, self.batch_size):
            idx = perm[start : start + self.batch_size]
            x = to_float_images(self.data.images[idx]).to(self.device)
            if self.flip:
                flips = torch.rand(idx.numel(), generator=self.generator) < 0.5
                x = torch.where(flips.to(x.device)[:, None, None, None], x.flip(3), x)
            batch: dict[str, Any] = {"images": x}
            if self.data.captions is not None:
                batch["captions"] = [self.data.captions[i] for i in idx.tolist()]
            yield batch


@TASKS.register("diffusion")
class DiffusionAdapter(TaskAdapter):
    """Denoising loss of a :class:`DiffusionModel` (see the module docstring)."""

    name = "diffusion"

    def __init__(self, seed: int = 0, flip: bool = True) -> None:
        self.seed = seed
        self.flip = flip
        self.generator = torch.Generator().manual_seed(seed)

    def maskable(self, model: nn.Module) -> nn.Module:  # noqa: D102
        if not isinstance(model, DiffusionModel):
            raise UsageError("the diffusion task works on a DiffusionModel (load_diffusion_model)")
        return model.unet

    def _loss(self, model: DiffusionModel, batch: dict[str, Any], generator) -> Tensor:
        images = batch["images"]
        device = images.device
        z = model.encode_images(images, generator)
        scheduler = model.noise_scheduler
        steps = int(scheduler.config.num_train_timesteps)
        noise = torch.randn(z.shape, generator=generator).to(device)
        t = torch.randint(0, steps, (z.shape[0],), generator=generator).to(device)
        noisy = scheduler.add_noise(z, noise, t)
        if model.conditional:
            captions = batch.get("captions")
            if captions is None:
                raise InputError("this UNet is text-conditioned: the data needs captions")
            cond = model.encode_prompts(captions, device)
            pred = model.unet(noisy, t, encoder_hidden_states=cond).sample
        else:
            pred = model.unet(noisy, t).sample
        kind = getattr(scheduler.config, "prediction_type", "epsilon")
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = scheduler.get_velocity(z, noise, t)
        elif kind == "sample":
            target = z
        else:
            raise UsageError(f"unsupported prediction_type {kind!r}")
        return F.mse_loss(pred.float(), target.float())

    def loss(self, model: nn.Module, batch: Any) -> Tensor:  # noqa: D102
        return self._loss(model, batch, self.generator)

    def batches(self, data, batch_size, device, generator):  # noqa: D102
        size = min(batch_size, data.images.shape[0])
        return _DiffusionBatches(data, size, device, generator, self.flip)

    def size(self, data: DiffusionData) -> int:  # noqa: D102
        return int(data.images.shape[0])

    @torch.no_grad()
    def evaluate(self, model, data, device, batch_size: int = 16, repeats: int = 2):  # noqa: D102
        """Mean denoising loss over ``repeats`` fixed draws of noise and timesteps per image."""
        generator = torch.Generator().manual_seed(self.seed + 7919)
        total, n = 0.0, 0
        with kept_modes(model):
            model.train(False)
            for _ in range(repeats):
                for batch in _DiffusionBatches(data, batch_size, device, generator, False):
                    count = batch["images"].shape[0]
                    total += float(self._loss(model, batch, generator)) * count
                    n += count
        return {"loss": total / max(n, 1)}

    @classmethod
    def claims(cls, path: Path) -> bool:  # noqa: D102
        path = Path(path)
        if (path / "model_index.json").is_file():
            return True
        config = path / "config.json"
        if config.is_file():
            try:
                name = json.loads(config.read_text(encoding="utf-8")).get("_class_name", "")
            except (OSError, ValueError, AttributeError):
                return False
            return isinstance(name, str) and name.startswith("UNet")
        return False

    @classmethod
    def open(cls, path, model_file, device):  # noqa: D102
        from ..verify_run import resolve_device

        model = load_diffusion_model(path, device=resolve_device(device))
        return model, cls()

    def load_data(self, model, folder, limit=None):  # noqa: D102
        return load_caption_folder(folder, model.resolution, model.conditional, limit)

    def save(self, model, folder, note):  # noqa: D102
        target = Path(folder) / "unet"
        model.unet.save_pretrained(target)
        (target / "freeze_finetune.json").write_text(json.dumps(dict(note), indent=2) + "\n")
        return target


# ------------------------------------------------------------------------- loading


def _component(module: Any, name: str, path: Path, subfolder: str | None) -> Any:
    cls = getattr(module, name, None)
    if cls is None:
        raise ModelFileError(f"{path}: unknown component class {name!r}")
    kwargs = {"subfolder": subfolder} if subfolder else {}
    try:
        return cls.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"cannot load {subfolder or 'model'} from {path}: {exc}") from None


def _scheduler(diffusers: Any, path: Path, subfolder: str | None) -> Any:
    config = path / (subfolder or "") / "scheduler_config.json"
    if config.is_file():
        kwargs = {"subfolder": subfolder} if subfolder else {}
        return diffusers.DDPMScheduler.from_pretrained(path, **kwargs)
    return diffusers.DDPMScheduler(num_train_timesteps=1000)


def _load_pipeline_folder(diffusers: Any, path: Path) -> DiffusionModel:
    index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))

    def class_of(key: str) -> str | None:
        entry = index.get(key)
        if isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1]:
            return str(entry[1])
        return None

    unet_class = class_of("unet")
    if unet_class is None or not (path / "unet").is_dir():
        raise ModelFileError(f"{path}: the pipeline has no unet/ to fine-tune")
    unet = _component(diffusers, unet_class, path, "unet")
    vae_class = class_of("vae")
    vae = _component(diffusers, vae_class, path, "vae") if vae_class else None
    encoder = None
    text_class, tok_class = class_of("text_encoder"), class_of("tokenizer")
    if text_class and tok_class:
        try:
            import transformers
        except ImportError:
            raise UsageError(
                "this pipeline has a text encoder, which needs transformers: "
                "pip install transformers"
            ) from None
        encoder = ClipPromptEncoder(
            _component(transformers, tok_class, path, "tokenizer"),
            _component(transformers, text_class, path, "text_encoder"),
        )
    return DiffusionModel(unet, _scheduler(diffusers, path, "scheduler"), vae, encoder)


def load_diffusion_model(
    source: str | Path, device: str | torch.device = "cpu", allow_download: bool = False
) -> DiffusionModel:
    """A :class:`DiffusionModel` in fp32 on ``device`` from a local pipeline or UNet folder (see
    the module docstring), or a Hugging Face Hub id with ``allow_download=True``."""
    diffusers = require_diffusers()
    path = Path(source)
    if path.is_dir():
        if (path / "model_index.json").is_file():
            model = _load_pipeline_folder(diffusers, path)
        elif (path / "config.json").is_file():
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
            name = str(config.get("_class_name", ""))
            if not name.startswith("UNet"):
                raise ModelFileError(f"{path} holds a {name or 'model'}, not a diffusers UNet")
            unet = _component(diffusers, name, path, None)
            model = DiffusionModel(unet, _scheduler(diffusers, path, None))
        else:
            raise ModelFileError(
                f"{path} is neither a diffusers pipeline (model_index.json) nor a UNet folder "
                "(config.json)"
            )
    elif path.exists():
        raise ModelFileError(f"{path}: a diffusion model is a folder (pipeline or UNet)")
    elif not allow_download:
        raise ModelFileError(
            f"{source} is not a local folder; downloading from the Hugging Face Hub needs "
            "allow_download=True"
        )
    else:  # pragma: no cover - needs the network
        pipe = diffusers.DiffusionPipeline.from_pretrained(str(source))
        encoder = None
        if getattr(pipe, "text_encoder", None) is not None:
            encoder = ClipPromptEncoder(pipe.tokenizer, pipe.text_encoder)
        scheduler = diffusers.DDPMScheduler.from_config(pipe.scheduler.config)
        model = DiffusionModel(pipe.unet, scheduler, getattr(pipe, "vae", None), encoder)
    return model.to(device)


def load_caption_folder(
    folder: str | Path, resolution: int, captions: bool, limit: int | None = None
) -> DiffusionData:
    """Images below ``folder`` (sorted) as :class:`DiffusionData` at ``resolution`` (square
    RGB uint8, centre crop). With ``captions``, every image needs a caption file with the same
    stem (``a.png`` + ``a.txt``; UTF-8, stripped). ``limit``: the first ``limit`` images."""
    from ..imageops import square_rgb, to_uint8
    from ..io.discover import discover_images
    from ..io.images import ImageDecodeError, decode_image

    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"data folder not found: {root}")
    files = sorted(discover_images(root).files)[:limit]
    if not files:
        raise InputError(f"no images found in {root}")
    texts: list[str] = []
    if captions:
        missing = [f for f in files if not (root / f).with_suffix(".txt").is_file()]
        if missing:
            raise InputError(
                f"{root}: {len(missing)} images have no caption file (image.png + image.txt), "
                f"e.g. {missing[0]}"
            )
        texts = [(root / f).with_suffix(".txt").read_text(encoding="utf-8").strip() for f in files]
    images = torch.empty((len(files), 3, resolution, resolution), dtype=torch.uint8)
    for i, rel in enumerate(files):
        try:
            decoded = decode_image((root / rel).read_bytes())
        except (OSError, ImageDecodeError) as exc:
            raise InputError(f"cannot read {root / rel}: {exc}") from None
        images[i] = to_uint8(square_rgb(decoded.pixels, resolution))
    return DiffusionData(images, tuple(texts) if captions else None)


__all__ = [
    "INSTALL_HINT",
    "ClipPromptEncoder",
    "DiffusionAdapter",
    "DiffusionData",
    "DiffusionModel",
    "PromptEncoder",
    "load_caption_folder",
    "load_diffusion_model",
    "require_diffusers",
]
