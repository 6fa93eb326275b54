"""Local paths and ``s3://`` URIs behind one pyarrow filesystem interface.

S3 uses the standard AWS credential chain (env vars, shared files, instance roles). A custom endpoint
(a MinIO or moto server, an on-prem store) comes from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``,
the variables boto3 itself honours, so boto3 and pyarrow always talk to the same server.
Credentials are never logged.

A storage failure (an unreachable endpoint, a missing bucket, a path that is a directory) becomes a
:class:`StorageError`: a :class:`~core.errors.UserError` (one line, exit 2 at every entry point) that
is still an ``OSError`` for callers that treat storage errors as data errors (a missing media object
is a quarantined sample, not a failed run).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import pyarrow.fs as pafs

from core.errors import UserError


class StorageError(UserError, OSError):
    """A local or S3 operation failed; the message names the URI, the operation and the cause."""


@contextlib.contextmanager
def storage_errors(uri: str, operation: str) -> Iterator[None]:
    """Turn an ``OSError`` raised inside into a one-line :class:`StorageError` naming ``uri``."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        cause = " ".join(str(exc).split()) or type(exc).__name__
        raise StorageError(f"{uri}: cannot {operation}: {cause}") from exc


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


DATA_ROOT_ENV = "VJEPA2_RAY_DATA_ROOT"


def data_root(configured: str = "") -> str:
    """Where relative data paths point: the config's ``data_root``, else ``$VJEPA2_RAY_DATA_ROOT``, else
    the working directory. Under ``ray job submit`` the working directory is the job's uploaded copy of
    the repository, which holds no ``data/`` (``.rayignore``): jobs set one of the first two."""
    root = configured or os.environ.get(DATA_ROOT_ENV, "")
    if is_s3(root):
        return root.rstrip("/")
    return str(Path(root or ".").expanduser().resolve())


def data_path(path: str, root: str = "") -> str:
    """``path`` made absolute: ``s3://`` URIs and absolute paths as given, relative ones under
    :func:`data_root` (``root`` being the config's ``data_root``); "" stays "" (an unset path)."""
    if not path or is_s3(path) or Path(path).expanduser().is_absolute():
        return str(Path(path).expanduser()) if path and not is_s3(path) else path
    return join(data_root(root), path)


def absolute(path: str) -> str:
    """A local path made absolute (``~`` expanded); ``s3://`` URIs and "" unchanged. Output locations are
    made absolute in the driver, so workers on other nodes or in other directories write the same place."""
    return path if not path or is_s3(path) else str(Path(path).expanduser().resolve())


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


@lru_cache(maxsize=8)
def _s3_filesystem(endpoint: str | None, region: str) -> pafs.S3FileSystem:
    kwargs: dict = {"region": region}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
        kwargs["force_virtual_addressing"] = False
    return pafs.S3FileSystem(**kwargs)


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path-within-it)`` for a local path or an ``s3://bucket/key`` URI."""
    uri = str(uri)
    if is_s3(uri):
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
        return _s3_filesystem(s3_endpoint(), region), uri[len("s3://") :]
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or an S3 URI."""
    if is_s3(base):
        return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])
    return str(Path(base, *parts))


def file_type(uri: str) -> pafs.FileType:
    """What ``uri`` is (file, directory, not found); a storage failure is a :class:`StorageError`."""
    with storage_errors(uri, "get file info"):
        fs, path = filesystem_for(uri)
        return fs.get_file_info(path).type


def exists(uri: str) -> bool:
    return file_type(uri) != pafs.FileType.NotFound


def read_bytes(uri: str) -> bytes:
    with storage_errors(uri, "read"):
        fs, path = filesystem_for(uri)
        with fs.open_input_stream(path) as stream:
            return stream.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` whole: locally via a temp file and rename, so readers never see a partial file."""
    with storage_errors(uri, "write"):
        fs, path = filesystem_for(uri)
        if is_s3(uri):
            with fs.open_output_stream(path) as stream:
                stream.write(data)
            return
        target = Path(path)
        if target.is_dir():
            raise IsADirectoryError("is a directory, not a file")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, target)


def delete(uri: str) -> None:
    """Remove the file at ``uri``; nothing to do when there is none."""
    if file_type(uri) == pafs.FileType.File:
        with storage_errors(uri, "delete"):
            fs, path = filesystem_for(uri)
            fs.delete_file(path)


def check_writable(directory: str) -> None:
    """Fail now, with a :class:`StorageError`, if files cannot be written under ``directory`` (an
    unreachable endpoint, a missing bucket, no permission, a file in the way), not hours into a run."""
    probe = join(directory, f".write-check-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write_bytes(probe, b"")
        delete(probe)
    except StorageError as exc:
        cause = " ".join(str(exc.__cause__ or exc).split())
        raise StorageError(f"{directory}: cannot write there: {cause}") from exc


def is_dir(uri: str) -> bool:
    return file_type(uri) == pafs.FileType.Directory


def list_files(uri: str, suffix: str = "") -> list[str]:
    """Files directly under a directory URI, sorted, skipping hidden and temporary (``.``/``_``) names."""
    with storage_errors(uri, "list"):
        fs, path = filesystem_for(uri)
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    names = sorted(info.base_name for info in infos if info.type == pafs.FileType.File)
    return [join(uri, name) for name in names if not name.startswith((".", "_")) and name.endswith(suffix)]
