"""The console script: the stage contract (presets, --print-config, --dry-run), help that is fast and
complete, and bad input as one line on stderr with exit 2."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pretrain_utils import world_overrides

from cluster.cli import COMMANDS, main, package_version
from core.config import from_dict
from train.config import PretrainConfig

VJEPA2_RAY = str(Path(sys.executable).with_name("vjepa2-ray"))
HEAVY = ("torch", "ray", "mlflow", "transformers", "faiss", "decord")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_has_help_on_every_option(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: vjepa2-ray " + name in out
    assert not undocumented_options(out), f"{name}: options without help: {undocumented_options(out)}"


def undocumented_options(help_text: str) -> list[str]:
    """Options and positionals in argparse help that carry no help text. An entry starts at a line
    indented by two spaces; it has help when text follows the option after a gap or on the next line."""
    entries: list[list[str]] = []
    listing = False  # inside "positional arguments:" / "options:" (not the description)
    for line in help_text.splitlines():
        if re.match(r"^\S", line):
            listing = line in ("positional arguments:", "options:")
        elif not listing:
            continue
        elif re.match(r"^  \S", line):
            entries.append([line])
        elif entries and line.startswith("   "):
            entries[-1].append(line)
    return [e[0].strip() for e in entries if len(e) == 1 and not re.search(r"\S\s{2,}\S", e[0].strip())]


def test_top_level_help_lists_what_each_command_does_and_imports_nothing_heavy():
    code = ("import sys, io, contextlib\nfrom cluster.cli import COMMANDS, main\nout = io.StringIO()\n"
            "for argv in [['--help']] + [[c, '--help'] for c in COMMANDS]:\n"
            "    with contextlib.redirect_stdout(out):\n"
            "        try: main(argv)\n        except SystemExit: pass\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\nsys.stderr.write(out.getvalue())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]", f"help imported {done.stdout.strip()}"
    for name, command in COMMANDS.items():
        assert re.search(rf"^    {re.escape(name)}\s+.*\S|^    {re.escape(name)}\n\s+\S", done.stderr, re.M), name
        assert "python -m" not in command.summary and "``" not in command.summary


def test_version_and_presets(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"vjepa2-ray {package_version()}" != "vjepa2-ray unknown"
    assert main(["presets"]) == 0
    listed = capsys.readouterr().out
    for preset in ("pretrain/tiny", "pretrain/vitl-cooldown", "curate/tiny", "model/vitg"):
        assert re.search(rf"^  {re.escape(preset)}\s+\S", listed, re.M), preset


def test_print_config_by_preset_name_from_any_directory(tmp_path):
    done = _run("pretrain", "--config", "pretrain/tiny", "--print-config", "trainer.num_workers=3",
                "data_root=/data/root", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    printed = yaml.safe_load(done.stdout)
    cfg = from_dict(PretrainConfig, printed)  # the printed YAML is itself a valid config
    assert cfg.trainer.num_workers == 3 and cfg.run.name == "pretrain-tiny"
    assert cfg.data.sources["ssv2"].manifest == "/data/root/data/sample_world/sources/ssv2/manifest.parquet"
    assert Path(cfg.run.output_dir).is_absolute()
    curate = _run("curate", "--config", "curate/tiny", "--print-config", "data_root=s3://bucket/root", cwd=tmp_path)
    assert curate.returncode == 0, curate.stderr
    printed = yaml.safe_load(curate.stdout)
    assert printed["pool"] == "s3://bucket/root/data/sample_world/sources/yt1b/manifest.parquet"
    assert printed["output"] == "s3://bucket/root/data/curated/tiny"
    assert printed["targets"]["k710"]["val"].startswith("s3://bucket/root/data/sample_world/targets/")


def test_dry_run_checks_inputs_and_opens_nothing(sample_world, tmp_path):
    out = tmp_path / "run"
    env_runs = tmp_path / "runs"
    done = _run("pretrain", "--config", "pretrain/tiny", "--dry-run", *world_overrides(sample_world, out),
                cwd=tmp_path, env={"VJEPA2_RAY_RUNS": str(env_runs)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("dry run:")
    assert not env_runs.exists() and not (out / "checkpoints").exists()  # no MLflow store, no Ray run record
    missing = _run("pretrain", "--config", "pretrain/tiny", "--dry-run", "data_root=" + str(tmp_path / "nowhere"),
                   cwd=tmp_path)
    assert "nowhere/data/sample_world/sources" in _one_line_error(missing) and "manifest not found" in missing.stderr


def test_python_dash_m_takes_the_same_contract(tmp_path):
    done = subprocess.run([sys.executable, "-m", "train.pretrain", "--config", "pretrain/tiny", "--print-config"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["run"]["name"] == "pretrain-tiny"
    assert json.dumps(yaml.safe_load(done.stdout))  # plain data: no Python-specific YAML tags


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([VJEPA2_RAY, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


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
