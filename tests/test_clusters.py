"""Unlearnable Clusters: k-means, perturbation optimisation and application (CPU, no network)."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch

from unlearnable.keys import SecretKey
from unlearnable.protect import clusters as uc
from unlearnable.protect.clusters import (
    ClusterProtector,
    ClusterResult,
    apply_cluster_perturbations,
    assign_clusters,
    cluster_features,
    normalized_mutual_info,
)
from unlearnable.protect.surrogate import (
    Surrogate,
    WeakSurrogateWarning,
    extract_features,
    load_surrogate,
)
from unlearnable.protect.uc_config import UCConfig
from unlearnable.protect.uc_optimise import (
    anchor_indices,
    augment_batch,
    cluster_kl_loss,
    optimise_cluster_perturbations,
    random_cluster_perturbations,
    resolve_temperature,
    training_indices,
)

EPS = 8 / 255
TOL = 1e-6


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


@pytest.fixture(scope="module")
def key() -> SecretKey:
    return SecretKey(bytes(range(32)))


@pytest.fixture(scope="module")
def other_key() -> SecretKey:
    return SecretKey(bytes(range(1, 33)))


@pytest.fixture(scope="module")
def surrogate() -> Surrogate:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WeakSurrogateWarning)
        return load_surrogate("random")


def _blobs(
    n_per: int, k: int, dim: int, spread: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=5.0, size=(k, dim))
    labels = np.repeat(np.arange(k), n_per)
    return (centres[labels] + rng.normal(scale=spread, size=(labels.size, dim))).astype(
        np.float32
    ), labels


@pytest.fixture(scope="module")
def colour_images() -> tuple[torch.Tensor, np.ndarray]:
    """24 images of 16x16 px in 3 colour groups (structure the random surrogate can see)."""
    g = torch.Generator().manual_seed(0)
    base = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.2, 0.2, 0.9]])
    labels = np.arange(24) % 3
    noise = torch.rand(24, 3, 16, 16, generator=g)
    images = (0.7 * base[labels][:, :, None, None] + 0.3 * noise).clamp(0, 1)
    return images, labels


@pytest.fixture(scope="module")
def clustered(surrogate, colour_images, key) -> ClusterResult:
    images, _ = colour_images
    return cluster_features(extract_features(surrogate, images), 3, key)


# ------------------------------------------------------------------------------ clustering


def test_clusters_recover_structure_and_are_deterministic(key: SecretKey) -> None:
    features, labels = _blobs(20, 4, 6, spread=0.3)
    first = cluster_features(features, 4, key)
    second = cluster_features(features, 4, key)
    assert first.assignments.dtype == np.int64 and first.assignments.shape == (80,)
    assert first.centers.dtype == np.float32 and first.centers.shape == (4, 6)
    np.testing.assert_array_equal(first.assignments, second.assignments)
    np.testing.assert_array_equal(first.centers, second.centers)
    assert normalized_mutual_info(first.assignments, labels) == pytest.approx(1.0)
    np.testing.assert_array_equal(assign_clusters(features, first.centers), first.assignments)
    assert first.sizes().sum() == 80 and first.k == 4


def test_clusters_differ_for_another_key(key: SecretKey, other_key: SecretKey) -> None:
    features, _ = _blobs(30, 6, 4, spread=3.0, seed=1)  # overlapping blobs: many local optima
    a = cluster_features(features, 6, key)
    b = cluster_features(features, 6, other_key)
    assert not np.array_equal(a.assignments, b.assignments)


def test_minibatch_path_is_deterministic(monkeypatch: pytest.MonkeyPatch, key: SecretKey) -> None:
    monkeypatch.setattr(uc, "MINIBATCH_THRESHOLD", 50)
    features, labels = _blobs(30, 3, 5, spread=0.3)
    a = cluster_features(features, 3, key)
    b = cluster_features(features, 3, key)
    np.testing.assert_array_equal(a.assignments, b.assignments)
    assert normalized_mutual_info(a.assignments, labels) == pytest.approx(1.0)


def test_cluster_errors(key: SecretKey) -> None:
    with pytest.raises(ValueError, match="cannot make 5 clusters from 3"):
        cluster_features(np.zeros((3, 2), dtype=np.float32), 5, key)
    with pytest.raises(ValueError):
        cluster_features(np.zeros(3, dtype=np.float32), 1, key)
    with pytest.raises(ValueError, match="NaN"):
        cluster_features(np.full((4, 2), np.nan, dtype=np.float32), 2, key)


def test_normalized_mutual_info() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert normalized_mutual_info(labels, labels) == pytest.approx(1.0)
    assert normalized_mutual_info(
        np.array([5, 5, 3, 3, 9, 9]), ["a", "a", "b", "b", "c", "c"]
    ) == pytest.approx(1.0)
    assert normalized_mutual_info(np.array([0, 1, 0, 1, 0, 1]), np.array([0, 0, 0, 1, 1, 1])) < 0.1
    with pytest.raises(ValueError):
        normalized_mutual_info(labels, labels[:3])


# ------------------------------------------------------------------------------ config


def test_config_validation_and_temperature() -> None:
    with pytest.raises(ValueError):
        UCConfig(eps=0)
    with pytest.raises(ValueError):
        UCConfig(parameterisation="gan")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        UCConfig(temperature=0)
    assert UCConfig().eps == pytest.approx(16 / 255)
    assert UCConfig().to_dict()["lr"] == pytest.approx(0.05)
    assert UCConfig(parameterisation="generator").learning_rate == pytest.approx(1e-3)
    centres = np.array([[0.0, 0.02], [0.02, 0.0]], dtype=np.float32)
    assert resolve_temperature(centres, UCConfig()) == pytest.approx(0.01)
    assert resolve_temperature(centres, UCConfig(temperature=1.0)) == 1.0
    assert resolve_temperature(np.zeros((2, 3)), UCConfig()) == 1.0
    np.testing.assert_array_equal(anchor_indices(4, 1), [1, 2, 3, 0])


# ------------------------------------------------------------------------------ optimisation


def test_optimisation_lowers_loss_and_respects_budget(
    surrogate, colour_images, clustered, key
) -> None:
    images, _ = colour_images
    before = images.clone()
    # No augmentation here, so the optimised objective is exactly the one evaluated below.
    eps = 16 / 255
    config = UCConfig(eps=eps, steps=25, lr=0.1, batch_size=8, resolution=16, augment=False)
    initial = optimise_cluster_perturbations(
        surrogate, images, clustered, UCConfig(eps=eps, steps=0, resolution=16), key
    )
    calls: list[tuple[int, int | None]] = []
    deltas = optimise_cluster_perturbations(
        surrogate, images, clustered, config, key, progress=lambda d, t: calls.append((d, t))
    )
    assert torch.equal(images, before)
    assert deltas.shape == (3, 3, 16, 16) and deltas.dtype == torch.float32
    assert deltas.abs().max() <= eps + TOL
    assert initial.abs().max() <= eps + TOL
    assert calls[-1] == (25, 25)
    loss_initial = cluster_kl_loss(surrogate, images, clustered, initial, config)
    loss_final = cluster_kl_loss(surrogate, images, clustered, deltas, config)
    assert loss_final.shape == (3,)
    assert (loss_final < loss_initial).all()
    assert loss_final.mean() < 0.9 * loss_initial.mean()


def test_optimisation_is_deterministic_per_key(
    surrogate, colour_images, clustered, key, other_key
) -> None:
    images, _ = colour_images
    config = UCConfig(eps=EPS, steps=3, batch_size=4, resolution=16)
    state = torch.random.get_rng_state()
    a = optimise_cluster_perturbations(surrogate, images, clustered, config, key)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is never used
    b = optimise_cluster_perturbations(surrogate, images, clustered, config, key)
    c = optimise_cluster_perturbations(surrogate, images, clustered, config, other_key)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_generator_parameterisation(surrogate, colour_images, clustered, key) -> None:
    images, _ = colour_images
    config = UCConfig(
        eps=EPS,
        steps=2,
        batch_size=4,
        resolution=18,
        parameterisation="generator",
        generator_ngf=4,
        generator_blocks=1,
        members_only=False,
        chunk_size=5,
    )
    state = torch.random.get_rng_state()
    deltas = optimise_cluster_perturbations(surrogate, images, clustered, config, key)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert deltas.shape == (3, 3, 18, 18)
    assert deltas.abs().max() <= EPS + TOL
    again = optimise_cluster_perturbations(surrogate, images, clustered, config, key)
    assert torch.equal(deltas, again)


def test_empty_cluster_and_subsampling(surrogate, colour_images, clustered, key) -> None:
    images, _ = colour_images
    keep = np.flatnonzero(clustered.assignments != 2)
    subset = clustered.subset(keep)
    config = UCConfig(eps=EPS, steps=1, batch_size=4, resolution=16, max_per_cluster=3)
    with pytest.warns(UserWarning, match="no member"):
        deltas = optimise_cluster_perturbations(surrogate, images[keep], subset, config, key)
    assert deltas.shape == (3, 3, 16, 16)


def test_optimisation_input_errors(surrogate, colour_images, clustered, key) -> None:
    images, _ = colour_images
    with pytest.raises(ValueError, match="assignments"):
        optimise_cluster_perturbations(surrogate, images[:5], clustered, UCConfig(steps=0), key)
    wrong_space = ClusterResult(clustered.assignments, np.zeros((3, 7), dtype=np.float32))
    with pytest.raises(ValueError, match="feature space"):
        optimise_cluster_perturbations(surrogate, images, wrong_space, UCConfig(steps=0), key)
    with pytest.raises(ValueError, match="itself"):
        optimise_cluster_perturbations(
            surrogate, images, clustered, UCConfig(steps=0, target_offset=3), key
        )


def test_augment_batch_is_a_seeded_shift_and_flip() -> None:
    x = torch.rand(4, 3, 16, 16)
    a = augment_batch(x, torch.Generator().manual_seed(1))
    b = augment_batch(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, x)


# ------------------------------------------------------------------------------ application


def test_apply_same_and_other_sizes_keeps_budget(key: SecretKey) -> None:
    deltas = random_cluster_perturbations(4, 16, EPS, key)
    assert deltas.abs().max() <= EPS
    clusters = torch.tensor([0, 3, 3, 1])
    for height, width in ((16, 16), (40, 28), (9, 13)):
        images = torch.rand(4, 3, height, width, generator=torch.Generator().manual_seed(height))
        before = images.clone()
        out = apply_cluster_perturbations(images, clusters, deltas, EPS)
        assert out.shape == images.shape and torch.equal(images, before)
        assert (out - images).abs().max() <= EPS + TOL
        assert out.min() >= 0 and out.max() <= 1
        assert (out - images).abs().max() > EPS / 4  # something was added
    same = apply_cluster_perturbations(torch.full((2, 3, 16, 16), 0.5), [2, 2], deltas)
    assert torch.allclose(same[0] - 0.5, deltas[2], atol=TOL)


def test_apply_grey_dtype_and_errors(key: SecretKey) -> None:
    deltas = random_cluster_perturbations(2, 8, EPS, key)
    grey = torch.full((2, 1, 12, 12), 0.5, dtype=torch.float64)
    out = apply_cluster_perturbations(grey, np.array([0, 1]), deltas, EPS)
    assert out.shape == grey.shape and out.dtype == torch.float64
    assert (out - grey).abs().max() <= EPS + TOL
    with pytest.raises(ValueError, match="alpha"):
        apply_cluster_perturbations(torch.rand(1, 4, 8, 8), [0], deltas)
    with pytest.raises(ValueError, match="cluster ids"):
        apply_cluster_perturbations(torch.rand(1, 3, 8, 8), [2], deltas)
    with pytest.raises(ValueError):
        apply_cluster_perturbations(torch.rand(2, 3, 8, 8), [0], deltas)


def test_cluster_protector_is_picklable_and_applies(key: SecretKey) -> None:
    deltas = random_cluster_perturbations(3, 8, EPS, key).numpy()
    protector = pickle.loads(pickle.dumps(ClusterProtector(deltas, EPS, {"surrogate": "random"})))
    params = protector.parameters()
    assert params["clusters"] == 3 and params["surrogate"] == "random"
    images = torch.rand(2, 3, 10, 10)
    out = protector.apply(images, torch.tensor([0, 2]), protector.plan(10, 10))
    assert (out - images).abs().max() <= EPS + TOL


def test_training_indices_subset_gives_the_same_perturbations(
    surrogate, colour_images, clustered, key
) -> None:
    images, _ = colour_images
    config = UCConfig(eps=EPS, steps=2, batch_size=2, resolution=16, max_per_cluster=3)
    idx = training_indices(clustered, config, key)
    assert idx.size == 9 and np.all(np.diff(idx) > 0)
    full = optimise_cluster_perturbations(surrogate, images, clustered, config, key)
    part = optimise_cluster_perturbations(
        surrogate, images[idx], clustered.subset(idx), config, key
    )
    assert torch.equal(full, part)
    np.testing.assert_array_equal(np.sort(clustered.assignments[idx]), np.repeat(np.arange(3), 3))
