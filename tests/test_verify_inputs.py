import pytest
import torch

from unlearnable.cli import main
from unlearnable.verify_inputs import VerifyInputError, load_verify_folders

from .conftest import make_labelled_folder, random_image


@pytest.fixture
def folders(tmp_path, runner, key_file):
    clean = make_labelled_folder(tmp_path / "clean", classes=("cat", "dog", "car"), per_class=3)
    test = make_labelled_folder(tmp_path / "test", classes=("cat", "dog", "car"), per_class=2)
    result = runner.invoke(main, ["protect", str(clean), "-o", str(tmp_path / "protected"), "--key", str(key_file), "-q"])
    assert result.exit_code == 0, result.output
    return clean, tmp_path / "protected", test


def test_loads_aligned_tensors_through_the_manifest(folders):
    clean, protected, test = folders
    loaded = load_verify_folders(protected / "unlearnable-manifest.json", clean, test)
    data = loaded.data
    # 24x20 images are not square: short side 20 is kept, the centre 20x20 cropped
    assert data.protected_train.shape == data.clean_train.shape == (9, 3, 20, 20)
    assert loaded.image_size == 20
    assert data.protected_train.dtype == torch.uint8
    assert data.class_names == ["car", "cat", "dog"] and data.test_labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert not torch.equal(data.protected_train, data.clean_train)
    assert loaded.train_files[0] == "car/img0.png"


def test_images_of_other_sizes_are_resized_and_cropped(folders, tmp_path):
    clean, protected, test = folders
    random_image((50, 30)).save(test / "cat" / "big.png")
    loaded = load_verify_folders(protected, clean, test, image_size=16)
    assert loaded.data.test_images.shape == (7, 3, 16, 16)


def test_mismatched_label_sets_are_a_clear_error(folders, tmp_path):
    clean, protected, test = folders
    (test / "bird").mkdir()
    random_image().save(test / "bird" / "b.png")
    with pytest.raises(VerifyInputError, match="only in test: bird"):
        load_verify_folders(protected, clean, test)


def test_empty_folders_and_unreadable_files(folders, tmp_path):
    clean, protected, test = folders
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VerifyInputError, match="no test images"):
        load_verify_folders(protected, clean, empty)
    (test / "cat" / "broken.png").write_bytes(b"garbage")
    with pytest.raises(VerifyInputError, match="broken.png"):
        load_verify_folders(protected, clean, test)


def test_one_class_is_refused(tmp_path):
    clean = make_labelled_folder(tmp_path / "clean", classes=("cat",), per_class=3)
    with pytest.raises(VerifyInputError, match="one class"):
        load_verify_folders(clean, clean, clean, labels="folders")


def test_scraper_labels_from_folders_and_from_a_mapping(folders, tmp_path):
    clean, protected, test = folders
    mapping = tmp_path / "map.csv"
    mapping.write_text("cat,animal\ndog,animal\ncar,vehicle\n")
    coarse = load_verify_folders(protected, clean, test, hacker_labels=str(mapping)).data
    assert coarse.num_classes == 2 and coarse.scraper_labels.tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert coarse.test_labels.tolist() == [1, 1, 0, 0, 0, 0]
    by_folder = load_verify_folders(protected, clean, test, hacker_labels="folders").data
    assert by_folder.scraper_labels.tolist() == by_folder.train_labels.tolist()
    mapping.write_text("cat,animal\n")
    with pytest.raises(VerifyInputError, match="no scraper label"):
        load_verify_folders(protected, clean, test, hacker_labels=str(mapping))


def test_verify_cli_end_to_end_and_usage_errors(folders, tmp_path, runner):
    clean, protected, test = folders
    args = ["verify", str(protected), "--clean-train", str(clean), "--test", str(test)]
    result = runner.invoke(main, [*args, "--attacks", "erm", "--budget", "smoke", "--epochs", "1", "--run-dir", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "report.md").exists() and (tmp_path / "run" / "epochs.csv").exists()
    alias = runner.invoke(main, ["verify-unlearnability", *args[1:], "--attacks", "nonsense"])
    assert alias.exit_code == 2 and "unknown attack" in alias.output
    empty = tmp_path / "nothing"
    empty.mkdir()
    assert runner.invoke(main, ["verify", str(protected), "--clean-train", str(clean), "--test", str(empty)]).exit_code == 2
    assert runner.invoke(main, [*args, "--model", "no-such-model"]).exit_code == 2


def test_labels_option_overrides_manifest_labels_but_keeps_its_pairing(folders, tmp_path, runner, key_file):
    clean, _, test = folders
    out = tmp_path / "png"
    result = runner.invoke(main, ["protect", str(clean), "-o", str(out), "--key", str(key_file), "-q", "--labels", "single", "--format", "jpeg"])
    assert result.exit_code == 0, result.output
    by_manifest = load_verify_folders(out, clean, test, hacker_labels="folders")
    assert by_manifest.data.class_names == ["all"] and by_manifest.data.num_classes == 3
    by_folders = load_verify_folders(out, clean, test, labels="folders")
    assert by_folders.data.class_names == ["car", "cat", "dog"] and by_folders.owner_label_mode == "folders"


def test_clean_files_that_differ_from_the_manifest_are_refused_or_warned(folders):
    from unlearnable.errors import IntegrityError
    from unlearnable.verify_inputs import CleanInputMismatchWarning

    clean, protected, test = folders
    random_image(seed=77).save(clean / "dog" / "img1.png")  # same name, other content
    with pytest.raises(IntegrityError, match="1 of 9 clean training files differ.*dog/img1.png"):
        load_verify_folders(protected, clean, test)
    with pytest.warns(CleanInputMismatchWarning):
        loaded = load_verify_folders(protected, clean, test, input_check="warn")
    assert loaded.input_mismatches == ["dog/img1.png"]
    assert load_verify_folders(protected, clean, test, input_check="off").input_mismatches == []
    with pytest.raises(VerifyInputError, match="input_check"):
        load_verify_folders(protected, clean, test, input_check="maybe")


def test_verify_cli_refuses_changed_clean_files(folders, tmp_path, runner):
    clean, protected, test = folders
    random_image(seed=78).save(clean / "cat" / "img0.png")
    result = runner.invoke(
        main,
        ["verify", str(protected), "--clean-train", str(clean), "--test", str(test),
         "--attacks", "erm", "--budget", "smoke", "--epochs", "1", "--run-dir", str(tmp_path / "run")],
    )
    assert result.exit_code == 1 and "differ from the inputs" in result.output
