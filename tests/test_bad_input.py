"""Bad input a new user brings: odd names, animations, hidden files, GIF, odd folders, and a
checkpoint planted in torchvision's cache."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unlearnable.cli import main
from unlearnable.io.discover import discover_images
from unlearnable.io.images import ImageDecodeError, decode_image
from unlearnable.io.manifest import MANIFEST_NAME, read_manifest

from .conftest import make_labelled_folder, random_image, tree_digest


def protect(runner, *args):
    return runner.invoke(main, ["protect", *map(str, args)])


def _records(folder: Path) -> dict[str, dict]:
    return {r["path"]: r for r in json.loads((folder / MANIFEST_NAME).read_text())["files"]}


def _save_bytes_name(folder: Path, name: bytes, image: Image.Image, fmt: str = "PNG") -> bytes:
    path = os.fsencode(folder) + b"/" + name
    with open(path, "wb") as handle:
        image.save(handle, format=fmt)
    return path


def test_non_utf8_file_name_is_protected_and_recorded_losslessly(tmp_path, runner, key_file):
    source = make_labelled_folder(tmp_path / "in", per_class=1)
    _save_bytes_name(source / "cat", b"caf\xe9.png", random_image(seed=5))
    out = tmp_path / "out"
    result = protect(runner, source, "-o", out, "--key", key_file, "-q")
    assert result.exit_code == 0, result.output
    text = (out / MANIFEST_NAME).read_bytes().decode("utf-8")  # valid UTF-8 JSON
    raw = json.loads(text)["files"]
    odd = next(r for r in raw if "path_bytes" in r)
    assert bytes.fromhex(odd["path_bytes"]) == b"cat/caf\xe9.png"
    assert odd["path"] == "cat/caf\ufffd.png" and odd["status"] == "ok"
    restored = {r.path for r in read_manifest(out).files}
    assert os.fsdecode(b"cat/caf\xe9.png") in restored
    assert os.path.exists(os.fsencode(out) + b"/cat/caf\xe9.png")
    again = runner.invoke(
        main, ["protect", str(source), "-o", str(out), "--key", str(key_file), "--resume", "--json"]
    )
    assert again.exit_code == 0 and json.loads(again.output)["resumed"] == 3


def test_non_utf8_label_folder_is_a_per_file_problem_and_the_run_goes_on(
    tmp_path, runner, key_file
):
    source = make_labelled_folder(tmp_path / "in", per_class=1)
    os.mkdir(os.fsencode(source) + b"/caf\xe9")
    _save_bytes_name(source / os.fsdecode(b"caf\xe9"), b"x.png", random_image(seed=6))
    before = tree_digest(source)
    out = tmp_path / "out"
    result = protect(runner, source, "-o", out, "--key", key_file)
    assert result.exit_code == 1 and "Traceback" not in result.output  # 1: some files failed
    assert "UTF-8" in result.output and "636166e9" in result.output
    raw = json.loads((out / MANIFEST_NAME).read_bytes().decode("utf-8"))
    assert raw["labels"]["classes"] == {"cat": 0, "dog": 1}  # no label made of bad bytes
    odd = next(r for r in raw["files"] if "path_bytes" in r)
    assert bytes.fromhex(odd["path_bytes"]) == b"caf\xe9/x.png"  # recorded losslessly
    assert odd["status"] == "error" and "636166e9" in odd["error"]
    assert [r["status"] for r in raw["files"] if r is not odd] == ["ok", "ok"]
    assert (out / "cat" / "img0.png").exists() and not os.path.exists(
        os.fsencode(out) + b"/caf\xe9"
    )
    assert tree_digest(source) == before
    again = runner.invoke(
        main, ["protect", str(source), "-o", str(out), "--key", str(key_file), "--resume", "--json"]
    )
    assert again.exit_code == 1 and json.loads(again.output)["resumed"] == 2


def test_names_at_the_file_system_limit_are_written(tmp_path, runner, key_file):
    source = tmp_path / "in"
    source.mkdir()
    long_name = "n" * (255 - len(".png")) + ".png"
    random_image().save(source / long_name)
    random_image(seed=1).save(source / ("é" * 125 + ".png"))  # 254 bytes
    out = tmp_path / "out"
    result = protect(runner, source, "-o", out, "--key", key_file, "-q")
    assert result.exit_code == 0, result.output
    assert (out / long_name).exists() and (out / ("é" * 125 + ".png")).exists()


def test_hidden_files_and_gif_are_reported_as_skipped(tmp_path, runner, key_file):
    source = make_labelled_folder(tmp_path / "in", per_class=1)
    random_image().save(source / "cat" / ".hidden.png")
    (source / ".thumbs").mkdir()
    random_image().save(source / ".thumbs" / "t.png")
    random_image().save(source / "dog" / "anim.gif")
    (source / ".DS_Store").write_bytes(b"\0\0")
    out = tmp_path / "out"
    result = protect(runner, source, "-o", out, "--key", key_file)
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output
    records = _records(out)
    assert {p for p, r in records.items() if r["status"] == "skipped"} == {
        "cat/.hidden.png",
        ".thumbs",
        "dog/anim.gif",
    }
    assert "hidden" in records["cat/.hidden.png"]["reason"]
    assert "GIF" in records["dog/anim.gif"]["reason"]
    summary = json.loads((out / MANIFEST_NAME).read_text())["summary"]
    assert summary["skipped"] == 3 and summary["failed"] == 0 and summary["ok"] == 2
    assert not (out / "cat" / ".hidden.png").exists()
    included = discover_images(source, include_hidden=True)
    assert "cat/.hidden.png" in included.files and ".thumbs/t.png" in included.files


def _frames(count: int) -> list[Image.Image]:
    return [random_image((16, 12), seed=i) for i in range(count)]


@pytest.mark.parametrize(
    ("fmt", "name", "options"),
    [
        ("WEBP", "anim.webp", {"lossless": True}),
        ("PNG", "anim.png", {}),
        ("TIFF", "pages.tif", {}),
    ],
)
def test_animations_and_multi_page_files_are_refused_per_file(
    tmp_path, runner, key_file, fmt, name, options
):
    source = make_labelled_folder(tmp_path / "in", per_class=1)
    first, *rest = _frames(3)
    first.save(source / "cat" / name, format=fmt, save_all=True, append_images=rest, **options)
    with pytest.raises(ImageDecodeError, match="3 frames"):
        decode_image((source / "cat" / name).read_bytes())
    out = tmp_path / "out"
    result = protect(runner, source, "-o", out, "--key", key_file)
    assert result.exit_code == 1
    record = _records(out)[f"cat/{name}"]
    assert record["status"] == "error" and "frames" in record["error"]
    assert not (out / "cat" / name).exists()
    assert _records(out)["cat/img0.png"]["status"] == "ok"


def test_single_frame_webp_is_still_protected(tmp_path, runner, key_file):
    source = tmp_path / "in"
    source.mkdir()
    random_image().save(source / "one.webp", lossless=True)
    result = protect(runner, source, "-o", tmp_path / "out", "--key", key_file, "-q")
    assert result.exit_code == 0, result.output


def test_dot_and_dot_dot_put_the_output_beside_the_input(tmp_path, runner, key_file, monkeypatch):
    source = make_labelled_folder(tmp_path / "photos", per_class=1)
    monkeypatch.chdir(source)
    result = protect(runner, ".", "--key", key_file, "-q")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "photos-protected" / "cat" / "img0.png").exists()
    result = protect(runner, "./", "--key", key_file, "-q", "--resume")
    assert result.exit_code == 0, result.output
    monkeypatch.chdir(source / "cat")
    before = tree_digest(source)
    result = protect(runner, "..", "--key", key_file, "-q", "--resume")
    assert result.exit_code == 0, result.output
    assert not (source / "cat" / "photos-protected").exists()
    assert not (source / "photos-protected").exists()
    assert tree_digest(source) == before


def test_planted_pickle_in_the_torchvision_cache_does_not_run(tmp_path, monkeypatch):
    """``tv:NAME`` with pretrained weights reads the cached file with weights_only=True."""
    import torch
    import torchvision
    from torchvision.models._api import WeightsEnum

    from unlearnable.protect.surrogate import SurrogateError, load_surrogate

    marker = tmp_path / "code-ran"

    class Planted:
        def __reduce__(self):
            return (Path.touch, (marker,))

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    cached = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    torch.save({"fc.weight": Planted()}, cached)
    original = WeightsEnum.__dict__["get_state_dict"]
    with pytest.raises(SurrogateError):
        load_surrogate("tv:resnet18")
    assert not marker.exists()
    assert WeightsEnum.__dict__["get_state_dict"] is original
    torch.load(cached, weights_only=False)  # the same file does run code when unpickled fully
    assert marker.exists()


def test_memory_gate_lets_large_batches_take_turns():
    import threading
    import time

    from unlearnable.io.memory import BYTES_PER_PIXEL, MemoryGate, batch_bytes

    assert batch_bytes(10) == 10 * BYTES_PER_PIXEL
    gate = MemoryGate(100)
    order = []

    def second():
        with gate.hold(60):
            order.append("second")

    with gate.hold(60):
        worker = threading.Thread(target=second)
        worker.start()
        time.sleep(0.2)
        order.append("first done")  # the second batch (60 + 60 > 100) waited
        assert gate.used == 60
    worker.join(5)
    assert order == ["first done", "second"] and gate.used == 0
    with gate.hold(500):  # larger than the budget: runs alone, does not wait forever
        assert gate.used == 500


def test_pixel_limit_refuses_before_decoding():
    pixels = np.zeros((4, 4, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    with pytest.raises(ImageDecodeError, match="over the limit"):
        decode_image(buffer.getvalue(), max_pixels=15)


def test_include_hidden_protects_hidden_files(tmp_path, runner, key_file):
    source = make_labelled_folder(tmp_path / "in", per_class=1)
    random_image().save(source / "cat" / ".hidden.png")
    out = tmp_path / "out"
    result = protect(runner, source, "-o", out, "--key", key_file, "--include-hidden")
    assert result.exit_code == 0, result.output
    records = _records(out)
    assert records["cat/.hidden.png"]["status"] == "ok"
    assert (out / "cat" / ".hidden.png").exists()
