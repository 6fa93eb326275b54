"""Keep secrets out of logs and MLflow params.

Two layers: keys whose name looks secret are masked wherever a config or dict is logged, and the
values of well-known credential environment variables are masked in any log message.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

MASK = "***"
# A key's last dotted part is cut into words (at _ - and camelCase); a word ending in one of SECRET_WORDS,
# or two neighbours forming a SECRET_PAIRS key name, mark a secret. Words, not substrings: the model
# field num_mask_tokens is not a secret (a substring match masked it and broke the checkpoint record).
SECRET_WORDS = ("secret", "password", "passwd", "token")
SECRET_PREFIXES = ("credential",)
SECRET_PAIRS = {("access", "key"), ("private", "key"), ("api", "key"), ("session", "key"), ("secret", "key")}
SECRET_ENV_VARS = (
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID",
    "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "RAY_AUTH_TOKEN", "HF_TOKEN",
)


def is_secret_key(key: str) -> bool:
    """Whether a config key or environment variable name looks like it holds a secret."""
    last = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(key).rsplit(".", 1)[-1]).lower()
    words = [w for w in re.split(r"[_\-\s]+", last) if w]
    return (any(w.endswith(SECRET_WORDS) or w.startswith(SECRET_PREFIXES) for w in words)
            or any(pair in SECRET_PAIRS for pair in zip(words, words[1:])))


def redact(data: Any) -> Any:
    """A copy of ``data`` with the values of secret-looking keys masked (recursively)."""
    if isinstance(data, dict):
        return {k: (MASK if is_secret_key(k) and v not in (None, "") else redact(v))
                for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(redact(v) for v in data)
    return data


def redact_text(text: str) -> str:
    """Mask the current values of known credential environment variables inside ``text``."""
    for var in SECRET_ENV_VARS:
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, MASK)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that masks credential values in every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact_text(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


# The project's top-level packages: their loggers get the project's handler (and not Ray's, MLflow's or
# the root's, which on a Ray worker already has Ray's own handler: one record would print twice).
PROJECT_LOGGERS = ("__main__", "core", "configs", "models", "pipelines", "curation", "train", "eval", "planning",
                   "cluster", "sweeps", "bench")
QUIET_LOGGERS = {"mlflow": logging.WARNING, "ray.train": logging.WARNING}  # ray.data: core/ray_logs.py


def setup_logging(level: int = logging.INFO) -> None:
    """Project-wide logging: one format, credentials masked, one line per record; third-party INFO
    chatter (MLflow's store setup, Ray Train's checkpoint narration) held back to warnings."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    handler.addFilter(RedactingFilter())
    for name in PROJECT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for h in logger.handlers for f in h.filters):
            logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
    root = logging.getLogger()
    if not root.handlers:  # a plain process: third-party records get the same format
        root.addHandler(handler)
        root.setLevel(level)
    for existing in root.handlers:  # a Ray worker's own root handler: no credential in its lines either
        if not any(isinstance(f, RedactingFilter) for f in existing.filters):
            existing.addFilter(RedactingFilter())
    for name, quiet in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(max(quiet, level))
