"""The pretraining entry point under ``ray job submit`` on a real ``ray start --head`` cluster.

The cluster binds to 127.0.0.1 with its own ports and temp dir, so it cannot touch the test session's
Ray or anyone else's; it is stopped by its own processes (``ray stop`` would end every Ray process on
the machine, this session's included). ``ray start`` runs with the venv first on PATH: job entrypoints
resolve ``python`` from the PATH of the process that started the cluster (docs/reference.md R-ray-2.9).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from pretrain_utils import TINY, world_overrides
from servers import free_port

from core.tracking import find_runs, local_store_uri
from models.checkpoint import load_encoder
from train.state import GIT_REVISION_ENV, git_revision, read_record

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
JOB_TIMEOUT_S = 420


def _cluster_processes(temp_dir: str) -> list[psutil.Process]:
    """Every process of the cluster rooted in ``temp_dir``: its daemons (their command lines name the
    session directory under it) and all their descendants (workers, agents)."""
    roots = []
    for proc in psutil.process_iter(["cmdline"]):
        if temp_dir in " ".join(proc.info["cmdline"] or []):
            roots.append(proc)
    found = {p.pid: p for p in roots}
    for root in roots:
        try:
            found.update({c.pid: c for c in root.children(recursive=True)})
        except psutil.NoSuchProcess:
            continue
    return [p for pid, p in found.items() if pid != os.getpid()]


def _stop_cluster(temp_dir: str) -> None:
    procs = _cluster_processes(temp_dir)
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=15)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=10)


@pytest.fixture
def ray_cluster() -> Iterator[tuple[str, dict[str, str]]]:
    """A head node on loopback; yields (dashboard address, environment for the ray CLI)."""
    temp_dir = tempfile.mkdtemp(prefix="vjr-", dir="/tmp")  # short: Ray's unix socket paths have a length limit
    # the cluster's own token (token auth on, as docs/reference.md R-ray-2.9 advises)
    token = Path(temp_dir, "auth_token")
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    dashboard = free_port()
    ports = {"--port": free_port(), "--dashboard-port": dashboard, "--ray-client-server-port": free_port(),
             "--node-manager-port": free_port(), "--object-manager-port": free_port(),
             "--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
             "--runtime-env-agent-port": free_port(), "--metrics-export-port": free_port()}
    worker_ports = free_port()
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
           f"--temp-dir={temp_dir}", "--num-cpus=4", f"--object-store-memory={400 * 1024**2}",
           "--disable-usage-stats", "--include-dashboard=true", f"--min-worker-port={worker_ports}",
           f"--max-worker-port={worker_ports + 60}", *(f"{k}={v}" for k, v in ports.items())]
    try:
        started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, started.stdout + started.stderr
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        _stop_cluster(temp_dir)
    leftovers = _cluster_processes(temp_dir)
    shutil.rmtree(temp_dir, ignore_errors=True)
    assert not leftovers, f"the started cluster left processes behind: {leftovers}"


@pytest.mark.slow
def test_ray_job_submit_pretrains_and_exports(ray_cluster, sample_world, tmp_path):
    address, env = ray_cluster
    runs, out = tmp_path / "runs", tmp_path / "job"
    revision = git_revision()
    runtime_env = {"env_vars": {"VJEPA2_RAY_RUNS": str(runs), GIT_REVISION_ENV: revision,
                                "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}}
    submission = f"vjepa2-pretrain-{int(time.time())}"
    overrides = world_overrides(sample_world, out, "optim.total_steps=2", "trainer.num_workers=1")
    submit = subprocess.run(
        [str(VENV_BIN / "ray"), "job", "submit", f"--address={address}", f"--submission-id={submission}",
         "--working-dir", ".", "--runtime-env-json", json.dumps(runtime_env), "--",
         "python", "-m", "train.pretrain", "--config", str(TINY.relative_to(REPO)), *overrides],
        env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S, cwd=REPO)
    assert submit.returncode == 0, (submit.stdout + submit.stderr)[-6000:]

    logs = subprocess.run([str(VENV_BIN / "ray"), "job", "logs", f"--address={address}", submission], env=env,
                          capture_output=True, text=True, timeout=60, check=True).stdout
    export = logs.strip().splitlines()[-1]  # the contract: the last line printed is the exported file
    assert export == str(out / "pretrain-tiny-step_00000002.pt")
    encoder, cfg = load_encoder(export, key="target_encoder")
    assert cfg.preset == "tiny" and not encoder.training

    (run,) = find_runs(local_store_uri(runs), "vjepa2-ray")
    assert run.data.params["trainer.num_workers"] == "1" and run.data.tags["vjepa2.export"] == export
    assert run.data.metrics["loss"] > 0 and "tokens_per_s" in run.data.metrics
    record = read_record(run.data.tags["vjepa2.checkpoint"])
    assert record["git_revision"] == revision and record["state"]["step"] == 2
