"""Operations: CLI, typed configs, MLflow tracking, storage (local / S3), secrets redaction, jobs."""
