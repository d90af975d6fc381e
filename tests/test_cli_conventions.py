"""The conventions every command shares: exit codes, -o/--output, --json, lazy imports."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

from unlearnable.cli import main
from unlearnable.errors import EXIT_INTERRUPTED, InputError, UsageError

from .conftest import make_labelled_folder


def test_help_and_usage_errors_do_not_import_torch() -> None:
    code = (
        "import sys; from click.testing import CliRunner; from unlearnable.cli import main; "
        "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0, r.output; "
        "r = CliRunner().invoke(main, ['verify']); assert r.exit_code == 2, r.output; "
        "r = CliRunner().invoke(main, ['protect', '--help']); assert r.exit_code == 0; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["keygen"],
        ["protect"],
        ["protect", ".", "--key"],
        ["verify", ".", "--clean-train", "."],
        ["demo", "--per-class", "1"],
        ["nonsense-command"],
    ],
)
def test_every_command_gives_exit_2_on_a_usage_error(runner, args) -> None:
    assert runner.invoke(main, args).exit_code == 2


def test_keygen_refuses_to_overwrite_and_prints_json(runner, tmp_path) -> None:
    path = tmp_path / "k.bin"
    first = runner.invoke(main, ["keygen", str(path), "--json"])
    assert first.exit_code == 0, first.output
    data = json.loads(first.output)
    assert data["key_file"] == str(path) and len(data["fingerprint"]) > 8
    assert path.read_bytes().hex() not in first.output  # never the key itself
    again = runner.invoke(main, ["keygen", str(path)])
    assert again.exit_code == 2 and "error:" in again.output


def test_protect_partial_failure_is_exit_1(runner, tmp_path, key_file) -> None:
    clean = make_labelled_folder(tmp_path / "in", per_class=2)
    (clean / "cat" / "broken.png").write_bytes(b"not an image")
    result = runner.invoke(main, ["protect", str(clean), "-o", str(tmp_path / "out"), "--key", str(key_file), "--json"])
    assert result.exit_code == 1, result.output
    summary = json.loads(result.output)
    assert summary["failed"] == 1 and summary["ok"] == 4


def test_library_errors_become_their_exit_codes(runner, monkeypatch, tmp_path) -> None:
    import unlearnable.verify_run as verify_run

    folder = make_labelled_folder(tmp_path / "d", per_class=2)
    args = ["verify", str(folder), "--clean-train", str(folder), "--test", str(folder), "-q"]

    def raising(exc):
        def fake(*a, **k):
            raise exc

        return fake

    monkeypatch.setattr(verify_run, "verify_folders", raising(InputError("no images here")))
    result = runner.invoke(main, args)
    assert result.exit_code == 2 and "error: no images here" in result.output

    hint = 'install it: pip install "unlearnable[diffusion]"'
    monkeypatch.setattr(verify_run, "verify_folders", raising(InputError(hint)))
    assert hint in runner.invoke(main, args).output  # brackets are text, not rich markup

    monkeypatch.setattr(verify_run, "verify_folders", raising(KeyboardInterrupt()))
    result = runner.invoke(main, args)
    assert result.exit_code == EXIT_INTERRUPTED and "interrupted" in result.output

    monkeypatch.setattr(verify_run, "verify_folders", raising(RuntimeError("boom")))
    result = runner.invoke(main, args)
    assert result.exit_code == 1
    assert "internal error: RuntimeError: boom" in result.output and "Traceback" not in result.output


def test_run_dir_is_a_hidden_alias_of_output(runner, tmp_path) -> None:
    help_text = runner.invoke(main, ["verify", "--help"]).output
    assert "-o, --output" in help_text and "--run-dir" not in help_text
    folder = make_labelled_folder(tmp_path / "d", per_class=2)
    args = ["verify", str(folder), "--clean-train", str(folder), "--test", str(folder)]
    both = runner.invoke(main, [*args, "-o", str(tmp_path / "a"), "--run-dir", str(tmp_path / "b")])
    assert both.exit_code == 2 and "not both" in both.output


def test_cli_choices_match_the_library() -> None:
    from unlearnable.attacks.suites import SUITES
    from unlearnable.attacks.training import BUDGETS
    verify_cli = importlib.import_module("unlearnable.cli.verify")  # the module, not the command
    from unlearnable.verify_run import BUDGET_NAMES

    assert tuple(verify_cli.BUDGETS) == tuple(BUDGETS) == BUDGET_NAMES
    assert set(verify_cli.SUITES) == set(SUITES)


def test_bad_options_are_usage_errors_in_the_library() -> None:
    from unlearnable.verify import Thresholds
    from unlearnable.verify_run import VerifyOptions, resolve_device

    with pytest.raises(UsageError, match="budget"):
        VerifyOptions(budget="huge")
    with pytest.raises(UsageError, match="seeds"):
        VerifyOptions(seeds=0)
    with pytest.raises(UsageError, match="weak threshold"):
        Thresholds(protected=0.2, weak=0.5)
    with pytest.raises(UsageError, match="device"):
        resolve_device("tpu")


def test_public_api_names_resolve() -> None:
    import unlearnable

    lazy = set(unlearnable._LAZY)
    assert lazy <= set(unlearnable.__all__)
    for name in unlearnable.__all__:
        assert getattr(unlearnable, name) is not None, name
    with pytest.raises(AttributeError):
        unlearnable.no_such_name  # noqa: B018
