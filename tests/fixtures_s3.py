"""A real S3-protocol server (moto's standalone ``moto_server``) on 127.0.0.1, started once per test session.

It speaks S3 over HTTP in its own process group, so boto3 and pyarrow's S3 client exercise real
requests (multipart uploads, ranged GETs, listings). The endpoint reaches the project through
``AWS_ENDPOINT_URL_S3``, the variable both boto3 and core/storage.py honour; the keys are dummy test
keys (moto checks none).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from servers import free_port, stop, wait_http

BUCKET = "vjepa2-test"
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session", name="s3_server")
def s3_server_fixture(tmp_path_factory):
    """Yields the endpoint URL of a fresh moto server with bucket :data:`BUCKET`; env set for the session."""
    workdir = tmp_path_factory.mktemp("moto")
    port = free_port()
    log = workdir / "moto.log"
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/", proc, timeout_s=30, log=log)
    saved = {k: os.environ.get(k) for k in [*S3_ENV, "AWS_ENDPOINT_URL_S3"]}
    os.environ.update(S3_ENV, AWS_ENDPOINT_URL_S3=url)
    import boto3

    boto3.client("s3", endpoint_url=url).create_bucket(Bucket=BUCKET)
    yield url
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    stop(proc)
