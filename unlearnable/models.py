"""Victim model zoo: the classifiers a scraper trains on (protected) images.

Every builder has the signature ``(num_classes: int, image_size: int, in_channels: int = 3)`` and
returns an ``nn.Module`` that maps float images ``(B, in_channels, image_size, image_size)`` in
``[0, 1]`` to logits ``(B, num_classes)``. Inputs are *not* normalised outside the model: each
model starts with a fixed (non-trainable) per-channel :class:`Normalize` layer, so callers feed
raw ``[0, 1]`` pixels, as a scraper's data pipeline (and the CUDA paper's) does.

Registered names (``VICTIMS.names()``):

* ``small-cnn``: 4 conv blocks (conv 3x3 + BN + ReLU, max-pool after the first three), global
  average pool, linear head; ~0.39M parameters. Fast on CPU; the default for CPU budgets.
* ``resnet18``: CIFAR-style ResNet-18 (3x3 stride-1 stem, no max-pool, stages 64/128/256/512,
  adaptive average pool); ~11.2M parameters. The CUDA paper's victim.
* ``resnet20``: CIFAR ResNet-20 (He et al. 2016, 3 stages of 3 basic blocks, 16/32/64 channels;
  1x1-conv projection shortcuts where the shape changes); ~0.27M parameters.
* ``vgg11-bn``: VGG-11 with batch norm; max-pools are skipped once the feature map is 1x1, so
  it also works on small images; adaptive average pool, 512-512 classifier with dropout.
* ``vit-tiny``: ViT-Ti/p (width 192, depth 12, 3 heads, class token, pre-norm); the patch size
  is chosen from the image size by :func:`vit_patch_size` (4 at 32 px, 16 at 224 px).

Any torchvision classification model is available as ``tv:<name>`` (e.g. ``tv:resnet50``),
built with ``weights=None`` and ``num_classes`` (so the final layer has ``num_classes`` outputs),
preceded by ImageNet mean/std normalisation. Use :func:`build_victim` to build by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .registry import Registry

VictimBuilder = Callable[..., nn.Module]

#: name -> builder ``(num_classes, image_size, in_channels=3) -> nn.Module``.
VICTIMS: Registry[VictimBuilder] = Registry("victim model")

#: Prefix of torchvision models in :func:`build_victim` (``tv:resnet50``).
TORCHVISION_PREFIX = "tv:"

#: ImageNet per-channel mean and std of [0, 1] RGB pixels: the normalisation of torchvision
#: victims and of surrogates without published preprocessing (the one definition in the package).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """Fixed per-channel ``(x - mean) / std``; ``(B, C, H, W)`` -> same shape. Not trainable.

    ``mean`` and ``std`` have one value per channel, or one value used for every channel.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels: int) -> None:
        super().__init__()
        mean_t = _per_channel(mean, channels)
        std_t = _per_channel(std, channels)
        self.register_buffer("mean", mean_t.view(1, channels, 1, 1))
        self.register_buffer("std", std_t.view(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return (x - self.mean) / self.std


def _per_channel(values: Sequence[float], channels: int) -> Tensor:
    t = torch.tensor(list(values), dtype=torch.float32)
    if t.numel() == 1:
        t = t.repeat(channels)
    if t.numel() != channels:
        raise ValueError(f"need 1 or {channels} normalisation values, got {t.numel()}")
    return t


def _default_normalize(channels: int) -> Normalize:
    """Normalisation for models trained from scratch: maps [0, 1] to about [-2, 2]."""
    return Normalize([0.5], [0.25], channels)


def _check_args(num_classes: int, image_size: int, in_channels: int) -> None:
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


# --------------------------------------------------------------------------- small CNN


@VICTIMS.register("small-cnn")
def small_cnn(num_classes: int, image_size: int, in_channels: int = 3) -> nn.Module:
    """4-block CNN (32/64/128/256 channels), ~0.39M parameters, ~15M MACs per 32 px image.

    Input ``(B, in_channels, image_size, image_size)`` float in [0, 1] (any size >= 1; the three
    2x2 max-pools use ``ceil_mode``), output logits ``(B, num_classes)``.
    """
    _check_args(num_classes, image_size, in_channels)
    widths = [32, 64, 128, 256]
    layers: list[nn.Module] = [_default_normalize(in_channels)]
    cin = in_channels
    for i, width in enumerate(widths):
        layers += _conv_bn(cin, width)
        if i < len(widths) - 1:
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- ResNets


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with an identity (or 1x1-conv projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for small images: 3x3 stride-1 stem, no max-pool, adaptive average pool.

    ``widths[i]`` channels and ``depths[i]`` basic blocks in stage ``i``; every stage after the
    first halves the resolution. Input ``(B, C, H, W)`` in [0, 1], output ``(B, num_classes)``.
    """

    def __init__(
        self,
        widths: Sequence[int],
        depths: Sequence[int],
        num_classes: int,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.normalize = _default_normalize(in_channels)
        self.stem = nn.Sequential(*_conv_bn(in_channels, widths[0]))
        stages: list[nn.Module] = []
        cin = widths[0]
        for i, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            blocks: list[nn.Module] = []
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(cin, width, stride))
                cin = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = self.stages(self.stem(self.normalize(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


@VICTIMS.register("resnet18")
def resnet18(num_classes: int, image_size: int, in_channels: int = 3) -> nn.Module:
    """CIFAR-style ResNet-18 (stages 64/128/256/512, 2 blocks each), ~11.2M parameters.

    Input ``(B, in_channels, image_size, image_size)`` float in [0, 1], logits ``(B, num_classes)``.
    """
    _check_args(num_classes, image_size, in_channels)
    return CifarResNet([64, 128, 256, 512], [2, 2, 2, 2], num_classes, in_channels)


@VICTIMS.register("resnet20")
def resnet20(num_classes: int, image_size: int, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-20 (stages 16/32/64, 3 blocks each), ~0.27M parameters.

    Input ``(B, in_channels, image_size, image_size)`` float in [0, 1], logits ``(B, num_classes)``.
    """
    _check_args(num_classes, image_size, in_channels)
    return CifarResNet([16, 32, 64], [3, 3, 3], num_classes, in_channels)


# --------------------------------------------------------------------------- VGG


_VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


@VICTIMS.register("vgg11-bn")
def vgg11_bn(num_classes: int, image_size: int, in_channels: int = 3) -> nn.Module:
    """VGG-11 with batch norm, adaptive average pool and a 512-512 dropout classifier.

    A max-pool is left out once the feature map would shrink below 1x1, so small images work.
    Input ``(B, in_channels, image_size, image_size)`` float in [0, 1], logits ``(B, num_classes)``.
    """
    _check_args(num_classes, image_size, in_channels)
    layers: list[nn.Module] = [_default_normalize(in_channels)]
    cin, size = in_channels, image_size
    for item in _VGG11:
        if item == "M":
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        else:
            layers += _conv_bn(cin, int(item))
            cin = int(item)
    layers += [
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(cin, 512),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(512, 512),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(512, num_classes),
    ]
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- ViT


def vit_patch_size(image_size: int) -> int:
    """The patch size of ``vit-tiny``: the smallest divisor of ``image_size`` that gives a grid of
    at most 8x8 patches below 128 px (4 at 32 px, 2 at 16 px) and at most 14x14 from 128 px on
    (16 at 224 px). A prime image size gives a single patch: pick another size for ViTs then.
    """
    max_grid = 8 if image_size < 128 else 14
    for p in range(1, image_size + 1):
        if image_size % p == 0 and image_size // p <= max_grid:
            return p
    return image_size


class VisionTransformer(nn.Module):
    """A plain ViT: patch embedding, class token, learned positions, pre-norm encoder, linear head.

    Input ``(B, C, image_size, image_size)`` float in [0, 1], logits ``(B, num_classes)``.
    """

    def __init__(
        self,
        num_classes: int,
        image_size: int,
        in_channels: int = 3,
        patch_size: int | None = None,
        width: int = 192,
        depth: int = 12,
        heads: int = 3,
        mlp_ratio: int = 4,
    ) -> None:
        super().__init__()
        patch = patch_size or vit_patch_size(image_size)
        if image_size % patch:
            raise ValueError(f"patch size {patch} does not divide image size {image_size}")
        self.image_size = image_size
        self.normalize = _default_normalize(in_channels)
        self.patch_embed = nn.Conv2d(in_channels, width, patch, stride=patch)
        num_patches = (image_size // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, width))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        layer = nn.TransformerEncoderLayer(
            width,
            heads,
            dim_feedforward=width * mlp_ratio,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(
                f"this ViT takes {self.image_size}x{self.image_size} images, got {tuple(x.shape)}"
            )
        tokens = self.patch_embed(self.normalize(x)).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed
        return self.head(self.norm(self.encoder(tokens))[:, 0])


@VICTIMS.register("vit-tiny")
def vit_tiny(num_classes: int, image_size: int, in_channels: int = 3) -> nn.Module:
    """ViT-Ti (width 192, depth 12, 3 heads), patch size from :func:`vit_patch_size`; ~5.4M params.

    Input ``(B, in_channels, image_size, image_size)`` float in [0, 1] (exactly this size),
    logits ``(B, num_classes)``.
    """
    _check_args(num_classes, image_size, in_channels)
    return VisionTransformer(num_classes, image_size, in_channels)


# --------------------------------------------------------------------------- torchvision


class _RepeatChannels(nn.Module):
    """``(B, 1, H, W)`` -> ``(B, 3, H, W)`` by repeating the grey channel."""

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return x.expand(-1, 3, -1, -1)


def torchvision_victim(
    tv_name: str, num_classes: int, image_size: int, in_channels: int = 3
) -> nn.Module:
    """A torchvision classification model by name (``"resnet50"``), randomly initialised.

    Built with ``weights=None, num_classes=num_classes`` (the final layer has ``num_classes``
    outputs) after ImageNet mean/std normalisation; grey images (1 channel) are repeated to RGB.
    Input ``(B, in_channels, H, W)`` float in [0, 1], logits ``(B, num_classes)``. Some models have
    minimum input sizes (e.g. ``inception_v3`` needs >= 75 px): that is torchvision's contract.
    """
    import torchvision.models as tvm

    _check_args(num_classes, image_size, in_channels)
    available = tvm.list_models(module=tvm)
    if tv_name not in available:
        raise ValueError(
            f"unknown torchvision classification model {tv_name!r}; choose from: "
            + ", ".join(available)
        )
    if in_channels not in (1, 3):
        raise ValueError(f"torchvision victims take 1 or 3 channels, got {in_channels}")
    kwargs: dict = {"weights": None, "num_classes": num_classes}
    if tv_name.startswith("vit_"):
        # torchvision ViTs take the input size as an argument (it must divide by the patch).
        kwargs["image_size"] = image_size
    net = tvm.get_model(tv_name, **kwargs)
    layers: list[nn.Module] = []
    if in_channels == 1:
        layers.append(_RepeatChannels())
    layers += [Normalize(IMAGENET_MEAN, IMAGENET_STD, 3), net]
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- by name


def victim_names() -> list[str]:
    """The registered victim names plus the torchvision hint ``tv:<name>``, for CLI help."""
    return [*VICTIMS.names(), f"{TORCHVISION_PREFIX}<torchvision model>"]


def check_victim_name(name: str) -> None:
    """Raise ``ValueError`` listing the choices if ``name`` names no victim; build nothing."""
    if name.lower().startswith(TORCHVISION_PREFIX):
        import torchvision.models as tvm

        tv_name = name[len(TORCHVISION_PREFIX) :]
        available = tvm.list_models(module=tvm)
        if tv_name not in available:
            raise ValueError(
                f"unknown torchvision classification model {tv_name!r}; choose from: "
                + ", ".join(available)
            )
        return
    if name not in VICTIMS and name.lower() not in VICTIMS.names():  # names() loads plugins
        raise ValueError(
            f"unknown victim model {name!r}; choose from: {', '.join(victim_names())} "
            f"(e.g. {TORCHVISION_PREFIX}resnet50)"
        )


def build_victim(
    name: str,
    num_classes: int,
    image_size: int,
    in_channels: int = 3,
    seed: int | None = None,
) -> nn.Module:
    """Build the victim ``name`` (registered, or ``tv:<torchvision name>``), in train mode.

    With ``seed``, the weights are drawn from ``torch.manual_seed(seed)`` inside
    :func:`torch.random.fork_rng`, so the same seed gives the same initial weights and the
    caller's global RNG is left untouched. Raises ``ValueError`` for an unknown name, listing the
    choices. The model maps ``(B, in_channels, image_size, image_size)`` floats in [0, 1] to
    ``(B, num_classes)`` logits.
    """
    check_victim_name(name)
    if name.lower().startswith(TORCHVISION_PREFIX):
        tv_name = name[len(TORCHVISION_PREFIX) :]

        def builder(nc: int, size: int, ch: int = 3) -> nn.Module:
            return torchvision_victim(tv_name, nc, size, ch)

    else:
        builder = VICTIMS.get(name)
    if seed is None:
        return builder(num_classes, image_size, in_channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder(num_classes, image_size, in_channels)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VICTIMS",
    "TORCHVISION_PREFIX",
    "Normalize",
    "CifarResNet",
    "VisionTransformer",
    "build_victim",
    "check_victim_name",
    "count_parameters",
    "small_cnn",
    "resnet18",
    "resnet20",
    "vgg11_bn",
    "vit_tiny",
    "torchvision_victim",
    "victim_names",
    "vit_patch_size",
]
