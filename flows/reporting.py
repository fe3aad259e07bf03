"""Artifacts shown in the Prefect UI: per-unit count tables, progress, markdown reports."""

from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact

from pipeline.steps.base import dropped_by_rule


class Progress:
    """A progress artifact advanced as units finish."""

    def __init__(self, total: int, description: str):
        self.total = max(total, 1)
        self.done = 0
        self.id = create_progress_artifact(progress=0.0, description=description)

    def advance(self, n: int = 1) -> None:
        self.done += n
        update_progress_artifact(self.id, progress=min(100.0, 100.0 * self.done / self.total))


def unit_rows(results: list[dict]) -> list[dict]:
    """One table row per unit: documents in/out, quarantined, drops by rule."""
    return [
        {
            "unit": r["unit"],
            "read": r["reader"].get("documents", 0),
            "kept": r["documents_out"],
            "quarantined": r["quarantined"],
            "dropped": ", ".join(f"{k}={v}" for k, v in sorted(dropped_by_rule(r["steps"]).items())) or "-",
            "resumed": "yes" if r["skipped"] else "no",
        }
        for r in results
    ]


def publish_unit_table(key: str, results: list[dict], description: str) -> None:
    publish_table(key, unit_rows(results), description)


def publish_table(key: str, rows: list[dict], description: str) -> None:
    create_table_artifact(key=key, table=rows, description=description)


def publish_markdown(key: str, markdown: str, description: str) -> None:
    create_markdown_artifact(key=key, markdown=markdown, description=description)
