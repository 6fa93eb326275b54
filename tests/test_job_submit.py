"""The README's "Running on a real cluster" quickstart, run as written on a real ``ray start --head``.

The session's cluster (``ray_head``, tests/ray_cluster.py) ran the README's step 1; here its steps 2-3
run in bash, in a copy of this working tree (so the jobs' data, runs and MLflow store stay in the test's
temp dir; the copy is a one-commit git repository so that ``git rev-parse HEAD`` works). The sample
world is the session's, linked in at ``data/sample_world`` (already complete, so the README's
``sample-world`` command finds it up to date). Then the jobs are judged by what a user sees: the
pretraining job's log (at most 60 lines, no terminal escapes, one line per step), its exported
checkpoint, the MLflow runs in the runs root the job was given, the commit the record names.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ray_cluster import REPO, quickstart

from core.tracking import find_runs, local_store_uri
from models.checkpoint import load_encoder
from train.state import read_record

JOB_TIMEOUT_S = 900
MAX_LOG_LINES = 60
STEP_LINE = re.compile(r"\bstep (\d+)/20\b")


def _copy_of_working_tree(dest: Path) -> str:
    """Tracked and untracked-but-not-ignored files of this checkout, committed once; returns the commit."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(source.read_bytes())
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "copy"], cwd=dest, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=dest, check=True, capture_output=True,
                          text=True).stdout.strip()


JOBS_SCRIPT = """
import json, sys
from ray.job_submission import JobSubmissionClient
client = JobSubmissionClient(sys.argv[1])
print(json.dumps([{"entrypoint": j.entrypoint, "status": str(j.status), "log": client.get_job_logs(j.submission_id)}
                  for j in client.list_jobs()]))
"""


def _jobs(cluster) -> dict[str, tuple[str, str]]:
    """entrypoint module -> (status, log) for every job the cluster ran, read by a client that has the
    cluster's token (a separate process: this one's Ray client state belongs to the test session)."""
    done = subprocess.run([sys.executable, "-c", JOBS_SCRIPT, cluster.address], env=cluster.env,
                          capture_output=True, text=True, timeout=120, check=True)
    found = {}
    for job in json.loads(done.stdout.strip().splitlines()[-1]):
        entry = job["entrypoint"]
        module = next((m for m in ("curation.curate", "train.pretrain", "train.posttrain", "eval.probe") if m in entry),
                      entry)
        found[f"{module} dry-run" if "--dry-run" in entry else module] = (job["status"], job["log"])
    return found


def artifact_names(runs: Path, run_id: str) -> set[str]:
    """The file names of every artifact of an MLflow run, in any folder."""
    from mlflow.tracking import MlflowClient

    client, names, folders = MlflowClient(local_store_uri(runs)), set(), [None]
    while folders:
        for item in client.list_artifacts(run_id, folders.pop()):
            (folders.append(item.path) if item.is_dir else names.add(Path(item.path).name))
    return names


@pytest.fixture(scope="module")
def quickstart_run(ray_head, sample_world, tmp_path_factory):
    """Steps 2-3 of the README in a copy of the working tree; returns (copy, commit, jobs, shell output)."""
    copy = tmp_path_factory.mktemp("checkout")
    commit = _copy_of_working_tree(copy)
    (copy / "data").mkdir()
    (copy / "data" / "sample_world").symlink_to(sample_world, target_is_directory=True)
    _, steps = quickstart()
    # a job started without the step-2 environment: a relative manifest is missing inside its upload
    lost = "ray job submit --working-dir . -- python -m train.pretrain --config pretrain/tiny --dry-run || true\n"
    shell = subprocess.run(["bash", "-c", "set -e\n" + steps + "\n" + lost], cwd=copy, env=ray_head.env,
                           capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    assert shell.returncode == 0, (shell.stdout + shell.stderr)[-8000:]
    return copy, commit, _jobs(ray_head), shell.stdout


@pytest.mark.slow
def test_posttrain_job_trains_on_the_pretrained_export_and_prints_its_own(quickstart_run):
    copy, _, jobs, _ = quickstart_run
    status, log = jobs["train.posttrain"]
    assert status.endswith("SUCCEEDED"), log[-4000:]
    runs = copy / "runs"
    assert log.strip().splitlines()[-1] == str(runs / "posttrain-tiny" / "posttrain-tiny-step_00000040.pt")
    assert (runs / "posttrain-tiny" / "quality.json").exists()
    (run,) = find_runs(local_store_uri(runs), "vjepa2-posttrain")  # its own experiment, not pretraining's
    assert run.data.tags["vjepa2.export"] == log.strip().splitlines()[-1]
    params = (runs / "posttrain-tiny" / "params-posttrain.yaml").read_text()
    assert str(runs / "pretrain-tiny" / "latest.pt") in params  # resolved against the data root
    assert "Traceback" not in log and "\x1b" not in log


@pytest.mark.slow
def test_pretrain_job_log_is_one_line_per_step_without_escapes(quickstart_run):
    _, _, jobs, _ = quickstart_run
    status, log = jobs["train.pretrain"]
    lines = log.strip().splitlines()
    assert status.endswith("SUCCEEDED"), log[-4000:]
    assert len(lines) <= MAX_LOG_LINES, f"{len(lines)} lines:\n{log}"
    assert "\x1b" not in log, "terminal escape sequences in the job log"
    steps = [int(m.group(1)) for m in map(STEP_LINE.search, lines) if m]
    assert steps == list(range(1, 21)), steps  # each step exactly once, in order
    assert all("ETA" in line and "s/step" in line and "elapsed" in line for line in lines if STEP_LINE.search(line))
    assert "Traceback" not in log and "UserWarning" not in log


@pytest.mark.slow
def test_quickstart_jobs_write_to_the_configured_runs_root(quickstart_run):
    copy, commit, jobs, _ = quickstart_run
    assert jobs["curation.curate"][0].endswith("SUCCEEDED"), jobs["curation.curate"][1][-4000:]
    _, log = jobs["train.pretrain"]
    export = log.strip().splitlines()[-1]  # the contract: the last line printed is the exported file
    runs = copy / "runs"
    assert export == str(runs / "pretrain-tiny" / "pretrain-tiny-step_00000020.pt")
    encoder, cfg = load_encoder(export, key="target_encoder")
    assert cfg.preset == "tiny" and not encoder.training

    (run,) = find_runs(local_store_uri(runs), "vjepa2-ray")
    assert run.data.params["trainer.num_workers"] == "1" and run.data.tags["vjepa2.export"] == export
    assert run.data.metrics["loss"] > 0
    record = read_record(run.data.tags["vjepa2.checkpoint"])
    assert record["git_revision"] == commit and record["state"]["step"] == 20
    assert find_runs(local_store_uri(runs), "curate"), "the curation job's MLflow run is not in the runs root"
    assert (copy / "data" / "curated" / "tiny").is_dir(), "curation output is not under the data root"


@pytest.mark.slow
def test_a_job_without_the_data_root_says_why_its_manifest_is_missing(quickstart_run):
    _, _, jobs, _ = quickstart_run
    status, log = jobs["train.pretrain dry-run"]
    assert status.endswith("FAILED")
    (error,) = [line for line in log.splitlines() if line.startswith("vjepa2-ray: error:")]
    assert "manifest not found" in error and "without data/" in error and "VJEPA2_RAY_DATA_ROOT" in error
    assert "will be LOST" in log  # its runs root would be inside the upload: said loudly
    assert "Traceback" not in log


@pytest.mark.slow
def test_probe_job_probes_the_pretrained_export(quickstart_run, ray_head, motion_set):
    """``vjepa2-ray probe`` as a job on the same cluster, over the quickstart's pretrained encoder (the
    session's small motion set; the README's probe line runs the full one)."""
    copy, _, _, _ = quickstart_run
    runs = copy / "runs"
    env = json.dumps({"env_vars": {"VJEPA2_RAY_DATA_ROOT": str(copy), "VJEPA2_RAY_RUNS": str(runs)}})
    command = ["ray", "job", "submit", "--working-dir", ".", "--runtime-env-json", env, "--", "python", "-m",
               "eval.probe", "--config", "eval/tiny-motion", "encoder.kind=vjepa2",
               "encoder.checkpoint=runs/pretrain-tiny/latest.pt", f"data.train={motion_set / 'train.parquet'}",
               f"data.val={motion_set / 'val.parquet'}", "optim.epochs=2", "data.crop_size=64"]
    done = subprocess.run(command, cwd=copy, env=ray_head.env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    status, log = _jobs(ray_head)["eval.probe"]
    assert status.endswith("SUCCEEDED"), log[-4000:]
    probe_file = Path(log.strip().splitlines()[-1])  # the contract: the probe file's path is printed last
    assert probe_file.parent == runs / "probe-tiny-motion" and probe_file.exists()
    result = json.loads((probe_file.parent / "result.json").read_text())
    assert result["val_clips"] == 20 and 0 <= result["val_top1"] <= 1
    assert str(runs / "pretrain-tiny" / "latest.pt") in (probe_file.parent / "params-probe.yaml").read_text()
    (run,) = find_runs(local_store_uri(runs), "vjepa2-probe")
    assert run.data.tags["vjepa2.probe"] == str(probe_file)
    heads = len(torch.load(probe_file, weights_only=True)["classifiers"])
    assert all(any(k.endswith(f"head_{h:02d}/val_top1") for k in run.data.metrics) for h in range(heads))
    assert {"result.json", "per_class.csv", "heads.png", "confusion.png"} <= artifact_names(runs, run.info.run_id)
    assert "Traceback" not in log and "\x1b" not in log
