"""Shared run-folder writer, Pillow plots and the model-file CLI options."""

from __future__ import annotations

import csv
import io
import json

import click
import pytest
import torch
from PIL import Image

from unlearnable.checkpoints import ModelSpec, save_model
from unlearnable.cli.common import device_option
from unlearnable.cli.model_options import (
    load_model_file,
    model_file_options,
    parse_classes,
    parse_floats,
)
from unlearnable.errors import UsageError
from unlearnable.models import build_victim
from unlearnable.plots import Series, histogram_plot, line_plot
from unlearnable.run_folder import RunFolder


def test_run_folder_writes_config_report_rows_and_plots(tmp_path) -> None:
    run = RunFolder(tmp_path / "run", kind="scan")
    run.write_config({"threshold": 0.2, "bad": float("nan")}, seeds=[0, 1])
    run.write_report({"verdict": "clean", "score": float("inf")}, version=1)
    run.write_rows("epochs.csv", [{"epoch": 1, "acc": 0.5}, {"epoch": 2, "acc": 0.25, "hist": [1, 2]}])
    run.write_plot("curve.png", line_plot([Series("acc", [1, 2], [0.5, 0.25])], "t", "epoch", "acc"))
    run.write_markdown("# report")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["schema"] == "unlearnable.scan-config" and config["seeds"] == [0, 1]
    assert config["config"]["bad"] is None and "git_commit" in config["provenance"]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["schema_version"] == 1 and report["score"] is None
    rows = list(csv.DictReader(io.StringIO((tmp_path / "run" / "epochs.csv").read_text())))
    assert rows[0] == {"epoch": "1", "acc": "0.5", "hist": ""} and rows[1]["hist"] == "[1,2]"
    assert Image.open(tmp_path / "run" / "curve.png").size == (720, 440)
    assert not list((tmp_path / "run").glob("*.tmp"))
    with pytest.raises(ValueError):
        run.write_rows("../escape.csv", [])


def test_plots_are_deterministic_and_show_the_data() -> None:
    a = line_plot([Series("x", [0, 1, 2], [0.1, 0.9, 0.4])], "t", "step", "y", hlines={"chance": 0.5})
    assert a == line_plot([Series("x", [0, 1, 2], [0.1, 0.9, 0.4])], "t", "step", "y", hlines={"chance": 0.5})
    b = line_plot([Series("x", [0, 1, 2], [0.9, 0.1, 0.4])], "t", "step", "y", hlines={"chance": 0.5})
    assert a != b
    png = histogram_plot([0.1, 0.2, 0.2, float("nan")], observed=0.9, title="null", xlabel="rate")
    assert Image.open(io.BytesIO(png)).format == "PNG"


def test_parsers() -> None:
    assert parse_floats("0.5, 0.25", "--mean") == (0.5, 0.25) and parse_floats(None, "x") is None
    with pytest.raises(UsageError, match="--mean"):
        parse_floats("a,b", "--mean")
    assert parse_classes("cat,dog") == ("cat", "dog")
    with pytest.raises(UsageError, match="at least 2"):
        parse_classes("cat")


def test_model_file_options_load_our_files_archives_and_refuse_pickles(tmp_path, runner) -> None:
    @click.command()
    @click.argument("model_path")
    @model_file_options
    @device_option()
    def show(model_path, model_file, device):
        model = load_model_file(model_path, model_file, device)
        click.echo(",".join(model.spec.classes))

    from unlearnable.cli.errors import CommandGroup

    group = CommandGroup(commands={"show": show})
    victim = build_victim("small-cnn", 2, 16, 3, seed=0).eval()
    save_model(victim, tmp_path / "ours", ModelSpec(classes=("cat", "dog"), input_size=16, arch="small-cnn"))
    assert runner.invoke(group, ["show", str(tmp_path / "ours")]).output.strip() == "cat,dog"
    (tmp_path / "names.txt").write_text("a\nb\n")
    archive = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(victim), archive)
    result = runner.invoke(group, ["show", str(archive), "--classes", f"@{tmp_path / 'names.txt'}", "--input-size", "16"])
    assert result.exit_code == 0 and result.output.strip() == "a,b"
    pickled = tmp_path / "w.pth"
    torch.save(victim.state_dict(), pickled)
    args = ["show", str(pickled), "--arch", "small-cnn", "--classes", "a,b", "--input-size", "16"]
    refused = runner.invoke(group, args)
    assert refused.exit_code == 2 and "--trust-pickle" in refused.output
    trusted = runner.invoke(group, [*args, "--trust-pickle"])
    assert trusted.exit_code == 0, trusted.output
