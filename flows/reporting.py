"""Artifacts shown in the Prefect UI: per-unit count tables, progress, markdown reports."""

from collections import Counter

from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact


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
    """One table row per unit: documents in/out, quarantined, drops by reason."""
    rows = []
    for r in results:
        reader = r.get("reader", {})
        dropped = Counter()
        for step in r.get("steps", []):
            dropped.update({f"{step['name']}:{k}": v for k, v in step["dropped"].items()})
        rows.append(
            {
                "unit": r["unit"],
                "read": reader.get("documents", 0),
                "kept": r.get("documents_out", 0),
                "quarantined": r.get("quarantined", 0),
                "dropped": ", ".join(f"{k}={v}" for k, v in sorted(dropped.items())) or "-",
                "resumed": "yes" if r.get("skipped") else "no",
            }
        )
    return rows


def totals(results: list[dict]) -> dict:
    read = sum(r.get("reader", {}).get("documents", 0) for r in results)
    kept = sum(r.get("documents_out", 0) for r in results)
    quarantined: Counter = Counter()
    dropped: Counter = Counter()
    for r in results:
        quarantined.update(r.get("reader", {}).get("quarantined", {}))
        for step in r.get("steps", []):
            dropped.update({f"{step['name']}:{k}": v for k, v in step["dropped"].items()})
    return {"read": read, "kept": kept, "quarantined": dict(quarantined), "dropped": dict(dropped)}


def publish_unit_table(key: str, results: list[dict], description: str) -> None:
    publish_table(key, unit_rows(results), description)


def publish_table(key: str, rows: list[dict], description: str) -> None:
    create_table_artifact(key=key, table=rows, description=description)


def publish_markdown(key: str, markdown: str, description: str) -> None:
    create_markdown_artifact(key=key, markdown=markdown, description=description)
