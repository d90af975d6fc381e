"""Surrogate loading, feature extraction and the feature cache (CPU, no network)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from unlearnable.protect.feature_cache import (
    file_ids_digest,
    load_feature_cache,
    save_feature_cache,
)
from unlearnable.protect.surrogate import (
    Surrogate,
    SurrogateError,
    WeakSurrogateWarning,
    extract_features,
    load_surrogate,
    resize_center_crop,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


def _random(spec: str = "random", **kwargs) -> Surrogate:
    with pytest.warns(WeakSurrogateWarning):
        return load_surrogate(spec, **kwargs)


@pytest.fixture(scope="module")
def tiny() -> Surrogate:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WeakSurrogateWarning)
        return load_surrogate("random")


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_random_surrogate_features_shape_and_frozen(tiny: Surrogate) -> None:
    assert tiny.input_size == 32 and tiny.embed_dim > 0
    assert not tiny.training
    assert all(not p.requires_grad for p in tiny.parameters())
    tiny.train()  # stays frozen
    assert not tiny.training
    for size in (16, 24, 32):
        out = tiny.features(_images(5, size))
        assert out.shape == (5, tiny.embed_dim) and out.dtype == torch.float32
        assert torch.isfinite(out).all()


def test_random_surrogate_is_deterministic_and_leaves_global_rng(tiny: Surrogate) -> None:
    state = torch.random.get_rng_state()
    other = _random()
    assert torch.equal(torch.random.get_rng_state(), state)
    x = _images(6, 32)
    with torch.no_grad():
        assert torch.equal(tiny.features(x), other.features(x))
    assert tiny.cache_id == other.cache_id


def test_features_are_differentiable_and_inputs_untouched(tiny: Surrogate) -> None:
    x = _images(3, 20)
    before = x.clone()
    x.requires_grad_(True)
    tiny.features(x).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.equal(x.detach(), before)


def test_grey_and_non_square_inputs(tiny: Surrogate) -> None:
    grey = torch.rand(2, 1, 24, 40)
    assert tiny.features(grey).shape == (2, tiny.embed_dim)
    with pytest.raises(ValueError, match="alpha"):
        tiny.features(torch.rand(1, 4, 32, 32))
    with pytest.raises(TypeError):
        tiny.features(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_resize_center_crop() -> None:
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    out = resize_center_crop(x, 4)
    assert out.shape == (2, 3, 4, 4)
    assert torch.equal(out, x[..., 1:5])
    assert resize_center_crop(x, 8).shape == (2, 3, 8, 8)


def test_extract_features_tensor_and_iterable_agree(tiny: Surrogate) -> None:
    x = _images(10, 32)
    calls: list[tuple[int, int | None]] = []
    batched = extract_features(tiny, x, batch_size=4, progress=lambda d, t: calls.append((d, t)))
    assert batched.shape == (10, tiny.embed_dim) and batched.dtype == np.float32
    assert calls[-1] == (10, 10) and [d for d, _ in calls] == [4, 8, 10]
    singles = extract_features(tiny, [x[i] for i in range(10)], batch_size=3)
    np.testing.assert_allclose(singles, batched, atol=1e-5)
    mixed = extract_features(tiny, iter([x[:2], x[2], x[3:]]), batch_size=4)
    np.testing.assert_allclose(mixed, batched, atol=1e-5)
    assert extract_features(tiny, [], batch_size=4).shape == (0, tiny.embed_dim)


def test_random_open_clip_model_and_input_size() -> None:
    small = _random("random", input_size=16)
    assert small.input_size == 16
    assert small.features(_images(2, 16)).shape == (2, small.embed_dim)


def test_torchvision_random_penultimate_features() -> None:
    net = _random("tv:resnet18:random", input_size=32)
    assert net.embed_dim == 512 and net.input_size == 32
    assert net.features(_images(2, 32)).shape == (2, 512)


def test_spec_errors() -> None:
    with pytest.raises(SurrogateError, match="needs weights"):
        load_surrogate("ViT-B-32")
    with pytest.raises(SurrogateError, match="unknown pretrained tag"):
        load_surrogate("ViT-B-32:no-such-tag")
    with pytest.raises(SurrogateError, match="unknown open_clip model"):
        load_surrogate("NoSuchNet:openai")
    with pytest.raises(SurrogateError, match="unknown torchvision"):
        load_surrogate("tv:no_such_net")
    with pytest.raises(SurrogateError, match="input_size"):
        load_surrogate("RN50:openai", input_size=64)
    with pytest.raises(SurrogateError, match="not found"):
        load_surrogate("RN50:/no/such/file.safetensors")


def test_pretrained_tag_offline_gives_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import open_clip.factory

    def offline(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    with pytest.raises(SurrogateError) as info:
        load_surrogate("RN50:openai")
    message = str(info.value)
    assert "offline" in message.lower() and "random" in message and "network" in message


def test_torchvision_download_offline_gives_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models._api import WeightsEnum

    def offline(self, *args, **kwargs):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(SurrogateError, match="(?s)offline.*random"):
        load_surrogate("tv:resnet18")


def test_pickle_checkpoint_needs_allow_pickle(tmp_path: Path) -> None:
    import torchvision

    trained = torchvision.models.resnet18()
    with torch.no_grad():
        for p in trained.parameters():
            p.mul_(0.5)
    pickled = tmp_path / "weights.pth"
    torch.save(trained.state_dict(), pickled)
    with pytest.raises(SurrogateError, match="allow_pickle"):
        load_surrogate(f"tv:resnet18:{pickled}")
    loaded = load_surrogate(f"tv:resnet18:{pickled}", allow_pickle=True)
    x = _images(2, 64)
    with torch.no_grad():
        trained.fc = torch.nn.Identity()
        expected = trained.eval()((resize_center_crop(x, 224) - loaded.mean) / loaded.std)
        assert torch.allclose(loaded.features(x), expected, atol=1e-5)
    assert "sha256=" in loaded.cache_id


def test_safetensors_open_clip_checkpoint_round_trip(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    source = _random("random:RN50")
    state = {f"visual.{k}": v.contiguous() for k, v in source.backbone.state_dict().items()}
    state["logit_scale"] = torch.ones(())  # whole-CLIP checkpoints carry other entries too
    path = tmp_path / "rn50.safetensors"
    save_file(state, str(path))
    loaded = load_surrogate(f"RN50:{path}")
    x = _images(1, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.features(x), source.features(x), atol=1e-5)
    with pytest.raises(SurrogateError, match="unknown checkpoint format"):
        other = tmp_path / "weights.onnx"
        other.write_bytes(b"x")
        load_surrogate(f"RN50:{other}")


def test_feature_cache_round_trip_and_mismatch(tmp_path: Path) -> None:
    features = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    ids = [f"img{i}.png:{'ab' * 32}" for i in range(4)]
    path = tmp_path / "cache" / "features.npz"
    save_feature_cache(path, features, ids, "random|size=32")
    assert [p.name for p in path.parent.iterdir()] == ["features.npz"]  # no temp file left
    loaded = load_feature_cache(path, ids, "random|size=32")
    assert loaded is not None and loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, features)
    assert load_feature_cache(path, ids[::-1], "random|size=32") is None
    assert load_feature_cache(path, ids[:3], "random|size=32") is None
    assert load_feature_cache(path, ids, "RN50:openai") is None
    assert load_feature_cache(tmp_path / "missing.npz", ids, "random|size=32") is None
    path.write_bytes(b"not a zip file")
    assert load_feature_cache(path, ids, "random|size=32") is None
    with pytest.raises(ValueError):
        save_feature_cache(path, features, ids[:2], "random")


def test_file_ids_digest_is_unambiguous() -> None:
    assert file_ids_digest(["ab", "c"]) != file_ids_digest(["a", "bc"])
    assert file_ids_digest(["a\nb"]) != file_ids_digest(["a", "b"])
