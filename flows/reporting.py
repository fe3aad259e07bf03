"""Artifacts shown in the Prefect UI: per-unit count tables, progress, markdown reports, images.

Progress is attached to the flow run the user launched (the root of the run tree), not to the
subflow that advances it, and is also reported to in-process listeners (the CLI's bar)."""

from __future__ import annotations

import base64
from contextlib import contextmanager
from typing import Callable, Iterator
from uuid import UUID

from prefect.artifacts import ProgressArtifact, create_markdown_artifact, create_table_artifact, update_progress_artifact

from pipeline.steps.base import dropped_by_rule

ProgressListener = Callable[[str, int, int], None]  # (description, done, total)
_listeners: list[ProgressListener] = []


@contextmanager
def following_progress(listener: ProgressListener) -> Iterator[None]:
    """Call `listener` whenever a Progress in this process is created or advanced."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


class Progress:
    """A progress artifact on the root flow run, advanced as units finish."""

    def __init__(self, total: int, description: str):
        self.total = max(total, 1)
        self.done = 0
        self.description = description
        self.id = ProgressArtifact(progress=0.0, description=description, flow_run_id=_root_flow_run_id()).create().id
        self._notify()

    def advance(self, n: int = 1) -> None:
        self.done += n
        update_progress_artifact(self.id, progress=min(100.0, 100.0 * self.done / self.total))
        self._notify()

    def _notify(self) -> None:
        for listener in list(_listeners):
            listener(self.description, min(self.done, self.total), self.total)


def _root_flow_run_id() -> UUID | None:
    from prefect.runtime import flow_run

    root = flow_run.root_flow_run_id if flow_run.id else None
    return UUID(str(root)) if root else None


def unit_rows(results: list[dict]) -> list[dict]:
    """One table row per unit: documents in/out, quarantined, then one column per drop rule
    (`step:reason`, 0 where a unit dropped nothing by it), so units compare column by column."""
    drops = [dropped_by_rule(r["steps"]) for r in results]
    rules = sorted(set().union(*drops)) if drops else []
    return [
        {
            "unit": r["unit"],
            "read": r["reader"].get("documents", 0),
            "kept": r["documents_out"],
            "quarantined": r["quarantined"],
            **{rule: dropped.get(rule, 0) for rule in rules},
            "resumed": "yes" if r["skipped"] else "no",
        }
        for r, dropped in zip(results, drops)
    ]


def publish_unit_table(key: str, results: list[dict], description: str) -> None:
    publish_table(key, unit_rows(results), description)


def publish_table(key: str, rows: list[dict], description: str) -> None:
    create_table_artifact(key=key, table=rows, description=description)


def publish_markdown(key: str, markdown: str, description: str) -> None:
    create_markdown_artifact(key=key, markdown=markdown, description=description)


def publish_dataset_card(version_uri: str, report: dict, store) -> str:
    """Write the version's card (`card.md` and its PNGs beside the manifest) and show it as a
    markdown artifact; returns the URI of `card.md`."""
    from pipeline.card import build_card, write_card

    card = build_card(version_uri, report)
    uri = write_card(version_uri, card, store)
    publish_images("dataset-card", card.markdown, card.images, f"dataset card of {version_uri} (also at {uri})")
    return uri


def publish_images(key: str, markdown: str, images: dict[str, bytes], description: str) -> None:
    """A markdown artifact whose `![...](name.png)` references show the PNGs in `images` in the
    Prefect UI: each reference is replaced by the image as a data URI, so the artifact needs
    no image server and no credentials (the UI renders markdown images, data URIs included).
    The same markdown with plain file names is what goes beside the outputs (card.md)."""
    for name, png in images.items():
        markdown = markdown.replace(f"]({name})", f"](data:image/png;base64,{base64.b64encode(png).decode()})")
    publish_markdown(key, markdown, description)
