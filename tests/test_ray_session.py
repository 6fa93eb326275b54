"""core/ray_session.py and core/ray_logs.py: a Ray instance the project starts listens on loopback only,
and its driver prints the workers' own lines without Ray's chatter or terminal escapes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import json, os, psutil, ray
from core.ray_session import SINGLE_MACHINE_ENV, RayConfig, connect
connect(RayConfig(num_cpus=1))

@ray.remote
def talk():
    print("a line the stage wrote", flush=True)
    print("", flush=True)
    print("Running Dataset: 16.0/176 [00:06<01:09, 2.30 row/s]\x1b[A\x1b[A", flush=True)
    print("[E core_worker.cc:2465] Actor X has constructor arguments in the object store and max_restarts > 0",
          flush=True)
    return os.getpid()

ray.get(talk.remote())  # a worker process is up and listening too
import time; time.sleep(3)  # worker output reaches the driver asynchronously
tree = [psutil.Process(), *psutil.Process().children(recursive=True)]
listening = sorted({c.laddr.ip for p in tree for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN})
print(json.dumps({"nodes": [n["NodeManagerAddress"] for n in ray.nodes()], "listening": listening,
                  "env_restored": SINGLE_MACHINE_ENV not in os.environ}))
ray.shutdown()
"""


def test_local_ray_binds_to_loopback_by_default():
    """GCS, raylet, workers and agents of a local start listen on 127.0.0.1 only (fresh process: the
    session's own Ray is started by the test fixture, not by connect)."""
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=180, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    worker_lines = [line for line in done.stdout.splitlines() if "pid=" in line]
    assert any(line.endswith(") a line the stage wrote") for line in worker_lines), done.stdout
    assert len(worker_lines) == 1, worker_lines  # the blank line, the redraw and the chatter are dropped
    assert "\x1b" not in done.stdout  # not a terminal: no color codes around the (pid=...) prefix
    assert seen["nodes"] == ["127.0.0.1"]
    assert seen["listening"] and set(seen["listening"]) <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, seen
    assert seen["env_restored"]
