"""The console script: every subcommand resolves, and bad input is one line on stderr with exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cluster.cli import SUBCOMMANDS, main

VJEPA2_RAY = str(Path(sys.executable).with_name("vjepa2-ray"))


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert "usage: vjepa2-ray " + name in capsys.readouterr().out


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([VJEPA2_RAY, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("vjepa2-ray: error:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_bad_config_is_one_line_naming_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    tiny = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "tiny.yaml"
    bad.write_text(f"_base_: {tiny}\ntrainer: {{num_wrkers: 2}}\n")
    line = _one_line_error(_run("pretrain", "--config", str(bad), cwd=tmp_path))
    assert "bad.yaml" in line and "trainer.num_wrkers" in line


def test_missing_data_directory_is_one_line(tmp_path):
    missing = tmp_path / "no_such_dir" / "manifest.parquet"
    line = _one_line_error(_run("validate-data", "--manifest", str(missing),
                                "--rejects", str(tmp_path / "r.parquet"), cwd=tmp_path))
    assert "no_such_dir" in line


def test_unreadable_manifest_is_one_line(tmp_path):
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"\x00not parquet")
    line = _one_line_error(_run("validate-data", "--manifest", str(junk),
                                "--rejects", str(tmp_path / "r.parquet"), cwd=tmp_path))
    assert "junk.parquet" in line
