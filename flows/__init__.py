"""Prefect flows and deployments: orchestration only; data logic lives in `pipeline/`."""
