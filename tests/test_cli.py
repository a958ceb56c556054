"""The command line: version, help for every command, one-line errors with exit code 2, JSON on stdout."""

import json
import subprocess
import sys

import pytest

from invivo.cli.main import COMMANDS, main

from .conftest import data_path


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("invivo ")


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "usage: invivo " + command in capsys.readouterr().out


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "invivo", "--help"], capture_output=True, text=True, check=True)
    for command in COMMANDS:
        assert command in out.stdout


def test_expected_error_is_one_line_exit_2(tmp_path, capsys):
    assert main(["scan", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no such file or folder" in err and "Traceback" not in err


def test_scan_json(capsys):
    root = data_path("siemens_megre")
    assert main(["scan", str(root), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["series"]) == 2 and doc["skipped_files"] == 1


def test_convert_writes_bids_names_and_refuses_overwrite(tmp_path, capsys):
    root = data_path("siemens_megre")
    out = tmp_path / "nii"
    assert main(["convert", str(root), "--out", str(out)]) == 0
    files = sorted(p.name for p in out.rglob("*.nii.gz"))
    assert len(files) == 2 and any("part-phase" in f for f in files) and any("MEGRE" in f for f in files)
    before = sorted(out.rglob("*"))
    assert main(["convert", str(root), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(out.rglob("*")) == before  # nothing partial left behind
