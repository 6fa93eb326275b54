"""core/ray_session.py: a Ray instance the project starts listens on loopback only, unless configured."""

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
connect(RayConfig(num_cpus=1, log_to_driver=False))
ray.get(ray.remote(lambda: os.getpid()).remote())  # a worker process is up and listening too
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
    assert seen["nodes"] == ["127.0.0.1"]
    assert seen["listening"] and set(seen["listening"]) <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, seen
    assert seen["env_restored"]
