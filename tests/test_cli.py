"""The command line: table, JSON, picture, help and errors."""
import json

import pytest

from splitfx.cli import main


def test_plan_table(capsys):
    assert main(["plan", "resnet18", "--blocks", "3", "--input-size", "3", "64", "64", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "resnet18: 3 blocks by memory" in out and "predicted peak saved activations: E2E" in out
    assert sum(line.split()[0] in {"0", "1", "2"} for line in out.splitlines()[3:6]) == 3


def test_plan_json_and_plot(capsys, tmp_path):
    png = tmp_path / "plan.png"
    argv = ["plan", "torchvision:resnet18", "-k", "4", "--input-size", "3", "64", "64", "--json", "--plot", str(png)]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["num_blocks"] == 4 and len(data["blocks"]) == 4
    for block in data["blocks"]:
        assert {"modules", "params", "saved_bytes", "flops"} <= block.keys()
    assert data["local_peak_bytes"] == max(b["saved_bytes"] for b in data["blocks"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["plan.png"], "no temp file left behind"


def test_split_points(capsys):
    argv = ["plan", "resnet18", "--split-points", "layer1", "layer3", "--input-size", "3", "64", "64", "--json"]
    assert main(argv) == 0
    blocks = json.loads(capsys.readouterr().out)["blocks"]
    assert blocks[0]["modules"][-1].startswith("layer1.") and blocks[1]["modules"][0].startswith("layer2.")
    assert blocks[1]["modules"][-1].startswith("layer3.") and blocks[2]["modules"][0].startswith("layer4.")


@pytest.mark.parametrize("argv,message", [
    (["plan", "resnet5"], "not a timm model name"),
    (["plan", "resnet18", "--blocks", "99", "--input-size", "3", "32", "32"], "at most"),
    (["plan", "resnet18", "--split-points", "nothing", "--input-size", "3", "32", "32"], "no module of that name"),
])
def test_errors_are_one_clear_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("splitfx: error:") and message in err and "Traceback" not in err


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    out = capsys.readouterr().out
    for flag in ("--blocks", "--input-size", "--batch", "--method", "--json", "--plot", "--split-points"):
        assert flag in out
