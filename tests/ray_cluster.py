"""A real ``ray start --head`` cluster for job tests, started by the README's own commands.

The README's cluster quickstart (the bash block after ``<!-- cluster-quickstart``) is the contract:
:func:`quickstart` returns it split into its step 1 (the head node) and the rest (the jobs). The
cluster runs step 1 as written, in bash, with three things of its own so that it cannot touch the
test session's Ray or anyone else's: a private ``HOME`` (the auth token goes to ``$HOME/.ray``), a
private temp dir, and its own free ports, appended to ``ray start`` by a shell function. It binds to
127.0.0.1 and is stopped by its own processes (``ray stop`` would end every Ray process on the
machine). ``ray start`` runs with the venv first on PATH: job entrypoints resolve ``python`` from the
PATH of the process that started the cluster (docs/reference.md R-ray-2.9).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psutil
from servers import free_port

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
MARKER = "<!-- cluster-quickstart"
STEP_2 = "# 2."


def quickstart() -> tuple[str, str]:
    """The README's quickstart block as (step 1: the head node, steps 2 on: the jobs)."""
    readme = (REPO / "README.md").read_text()
    found = re.search(re.escape(MARKER) + r".*?\n```bash\n(.*?)\n```", readme, re.S)
    assert found, f"README.md has no bash block after {MARKER}"
    block = found.group(1)
    assert STEP_2 in block, f"the quickstart block has no '{STEP_2}' step"
    head, jobs = block.split(STEP_2, 1)
    return head, STEP_2 + jobs


@dataclass
class Cluster:
    address: str  # the dashboard (job submission) address
    env: dict[str, str]  # what a shell that followed step 1 has: PATH, HOME, RAY_AUTH_MODE, RAY_ADDRESS
    temp_dir: str


def _processes(temp_dir: str) -> list[psutil.Process]:
    """Every process of the cluster rooted in ``temp_dir``: its daemons (their command lines name the
    session directory under it) and all their descendants (workers, agents)."""
    roots = [p for p in psutil.process_iter(["cmdline"]) if temp_dir in " ".join(p.info["cmdline"] or [])]
    found = {p.pid: p for p in roots}
    for root in roots:
        try:
            found.update({c.pid: c for c in root.children(recursive=True)})
        except psutil.NoSuchProcess:
            continue
    return [p for pid, p in found.items() if pid != os.getpid()]


def _signal_all(procs: list[psutil.Process], sig: signal.Signals) -> None:
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.NoSuchProcess:
            continue


def start() -> Cluster:
    """Run the README's step 1 with private HOME, temp dir and ports; return the cluster."""
    temp_dir = tempfile.mkdtemp(prefix="vjr-", dir="/tmp")  # short: Ray's unix socket paths have a length limit
    home = Path(temp_dir, "home")
    home.mkdir()
    workers = free_port()
    worker_range = range(workers, workers + 61)
    names = ("port", "dashboard-port", "ray-client-server-port", "node-manager-port", "object-manager-port",
             "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
             "metrics-export-port")
    ports: dict[str, int] = {}
    while len(ports) < len(names):  # distinct, and outside the workers' range (Ray refuses overlaps)
        port = free_port()
        if port not in worker_range and port not in ports.values():
            ports[names[len(ports)]] = port
    dashboard = ports["dashboard-port"]
    flags = [*(f"--{name}={port}" for name, port in ports.items()), f"--min-worker-port={workers}",
             f"--max-worker-port={worker_range[-1]}", f"--temp-dir={temp_dir}", "--num-cpus=4",
             f"--object-store-memory={400 * 1024**2}", "--disable-usage-stats"]
    env = {**os.environ, "HOME": str(home), "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    head, _ = quickstart()
    # `ray start` as written, plus this cluster's own ports and temp dir; then report the environment
    script = (f"ray() {{ if [ \"$1\" = start ]; then command ray \"$@\" {' '.join(flags)}; "
              "else command ray \"$@\"; fi; }\nset -e\n" + head + "\nenv -0 > \"$VJR_ENV_OUT\"\n")
    env_out = Path(temp_dir, "env")
    done = subprocess.run(["bash", "-c", script], env={**env, "VJR_ENV_OUT": str(env_out)}, capture_output=True,
                          text=True, timeout=180, cwd=REPO)
    cluster = Cluster(f"http://127.0.0.1:{dashboard}", {}, temp_dir)
    if done.returncode != 0:
        stop(cluster)
        raise AssertionError(f"README step 1 failed:\n{done.stdout}\n{done.stderr}")
    shell_env = dict(item.split("=", 1) for item in env_out.read_text().split("\0") if "=" in item)
    cluster.env = {**shell_env, "RAY_ADDRESS": cluster.address}
    assert (home / ".ray" / "auth_token").is_file(), "step 1 left no auth token"
    return cluster


def stop(cluster: Cluster) -> None:
    """End every process of the cluster, then check none is left."""
    procs = _processes(cluster.temp_dir)
    _signal_all(procs, signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=15)
    _signal_all(alive, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=10)
    leftovers = _processes(cluster.temp_dir)
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)
    assert not leftovers, f"the started cluster left processes behind: {leftovers}"
