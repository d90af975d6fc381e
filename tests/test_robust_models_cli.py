"""Model-side commands given what outside users bring (see ``test_robust_models``): outputs that
would hit the inputs, trigger files and backdoor parameters that cannot be used, too few images.

Each test here failed before the fix it names (a traceback, an "internal error" or a clobbered
input)."""

from __future__ import annotations

import pytest

from tests.conftest import make_labelled_folder, random_image
from tests.test_robust_models import CLASSES, Plain, _images, _script
from unlearnable.cli import main
from unlearnable.defenses.ebyd import ScanConfig, scan_model
from unlearnable.defenses.ebyd_data import CleanSet
from unlearnable.defenses.exposure import ExposureConfig
from unlearnable.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------ CLI inputs and outputs


def test_purify_and_finetune_refuse_to_overwrite_the_input_model(runner, tmp_path) -> None:
    # before: purify -o MODEL_FOLDER replaced the model it had just read
    from unlearnable.checkpoints import ModelSpec, save_model
    from unlearnable.models import build_victim

    folder = tmp_path / "model"
    save_model(
        build_victim("small-cnn", 3, 12, seed=0), folder, ModelSpec(CLASSES, 12, "small-cnn")
    )
    before = (folder / "model.safetensors").read_bytes()
    clean = make_labelled_folder(tmp_path / "clean", CLASSES, per_class=2, size=(12, 12))
    for args in (
        ["purify", str(folder), "--clean", str(clean), "-o", str(folder)],
        ["purify", str(folder / "model.json"), "--clean", str(clean), "-o", str(folder)],
        ["finetune", str(folder), str(clean), "--mask", str(tmp_path), "-o", str(tmp_path)],
    ):
        run = runner.invoke(main, args)
        assert run.exit_code == 2, run.output
        assert "would overwrite the input model" in run.output
    assert (folder / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize(
    ("content", "message"),
    [("not json", "cannot read the trigger description"), ("[1, 2]", "is not a trigger"),
     ('{"name": "badnets", "target": 7}', "is not a class of the model")],
)  # fmt: skip
def test_purify_trigger_files_that_cannot_be_used_are_usage_errors(tmp_path, content, message):
    # before: "internal error: JSONDecodeError" / "invalid literal for int()"
    from unlearnable.attacks.backdoor import trigger_and_target

    path = tmp_path / "trigger.json"
    path.write_text(content)
    with pytest.raises(UsageError, match=message):
        trigger_and_target(str(path), None, CLASSES)
    assert trigger_and_target("badnets", "c", CLASSES) == ("badnets", 2)


@pytest.mark.parametrize(
    ("params", "message"),
    [({"size": "abc"}, "size must be a number"), ({"size": 2.5}, "whole number"),
     ({"nosuch": 1}, "unknown parameter"), ({"pattern": 3}, "pattern must be a name")],
)  # fmt: skip
def test_backdoor_parameters_of_the_wrong_type_are_named(params, message) -> None:
    # before: "badnets: '<' not supported between instances of 'str' and 'int'"
    from unlearnable.attacks.backdoor import make_backdoor

    with pytest.raises(UsageError, match=message):
        make_backdoor("badnets", **params)


def test_backdoor_train_reads_the_size_from_the_first_readable_image(tmp_path) -> None:
    from unlearnable.defenses.ebyd_subjects import _first_size

    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    (root / "a" / "0.png").write_bytes(b"junk")
    random_image((20, 14)).save(root / "a" / "1.png")
    assert _first_size(root) == 14


def test_an_output_that_is_a_file_is_refused_before_any_work(runner, tmp_path) -> None:
    # before: "internal error: FileExistsError" after the whole scan had run
    model = _script(tmp_path, Plain())
    clean = make_labelled_folder(tmp_path / "clean", CLASSES, per_class=2, size=(12, 12))
    taken = tmp_path / "taken"
    taken.write_text("mine")
    for args in (
        ["scan", str(model), "--clean", str(clean), "--classes", "a,b,c", "--input-size", "12"],
        ["backdoor", "train", str(clean)],
        ["freeze", str(model), "--illegal", str(clean), "--legal", str(clean)],
    ):
        run = runner.invoke(main, [*args, "-o", str(taken)])
        assert run.exit_code == 2, run.output
        assert "is a file; give a folder" in run.output
    assert taken.read_text() == "mine"


def test_too_many_exposures_for_the_defense_images_is_a_clear_usage_error() -> None:
    # before: "exposure needs at least 2 clean defense images" (no hint at --exposures)
    images, labels = _images()
    config = ScanConfig(exposure=ExposureConfig(max_epochs=1), defense_images=8, exposures=4)
    with pytest.raises(UsageError, match="lower --exposures"):
        scan_model(Plain(), CleanSet(images, labels, CLASSES), config)


def test_an_output_inside_an_input_image_folder_is_refused(runner, tmp_path) -> None:
    # before: scan wrote its PNG plots into CLEAN/run/, and the next scan of CLEAN failed on
    # "run is not a model class"
    model = _script(tmp_path, Plain())
    clean = make_labelled_folder(tmp_path / "clean", CLASSES, per_class=2, size=(12, 12))
    before = sorted(p.name for p in clean.rglob("*"))
    for args in (
        ["scan", str(model), "--clean", str(clean), "--classes", "a,b,c", "--input-size", "12"],
        ["backdoor", "train", str(clean)],
    ):
        run = runner.invoke(main, [*args, "-o", str(clean / "run")])
        assert run.exit_code == 2, run.output
        assert "is inside the input folder" in run.output
    assert sorted(p.name for p in clean.rglob("*")) == before


def test_backdoor_train_on_too_few_images_is_an_input_error(runner, tmp_path) -> None:
    # before: "internal error: RuntimeError: max(): Expected reduction dim" (empty training set)
    data = make_labelled_folder(tmp_path / "data", ("a", "b"), per_class=1, size=(12, 12))
    run = runner.invoke(main, ["backdoor", "train", str(data), "-o", str(tmp_path / "out")])
    assert run.exit_code == 2, run.output
    assert "too few to hold out a test set" in run.output
