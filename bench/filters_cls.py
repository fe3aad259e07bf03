"""Classifier and PII figures for bench/filters.py (also runnable alone):

    python bench/filters_cls.py     # last line: {"toxicity": {...}, "pii_web": {...}}

- toxicity: the default model (trained from the Jigsaw/Wikipedia comments exactly as the
  filter trains it) scored on its held-out 10 % (comments it never saw): precision, recall,
  F1 at the configured threshold and at 0.5, ROC-AUC; its share of ordinary English pages of
  the web sample dropped at the configured threshold (target <= 1 %: pages that are not
  forum threads or 4chan, and that lid.176 reads as English), the score quantiles there, the
  share of 4chan threads dropped, what empty and one-word texts get, and the model's digest
  over two trainings (reproducible build).
- pii_web: precision and recall per kind on the 700 labelled real web lines
  (pipeline/steps/pii_labels.py).
"""

from __future__ import annotations

import gzip
import json
import os
import random
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHARED = Path(os.environ.get("TOKENMILL_SHARED") or Path(__file__).resolve().parents[2] / "shared")


def cpu_seconds() -> float:
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def ordinary_english_pages(shared: Path) -> tuple[list[str], list[str]]:
    """(ordinary English pages, 4chan threads) of the web sample."""
    import pyarrow as pa

    from pipeline.steps.langid import LanguageId

    rows = [json.loads(line) for line in gzip.open(shared / "corpora" / "web" / "web_sample.jsonl.gz", "rt")]
    lid = LanguageId(shared / "models" / "lid.176.ftz", languages=None)
    langs, _ = lid.predict(pa.array([r["text"] for r in rows], pa.large_string()))
    ordinary, chan = [], []
    for row, lang in zip(rows, langs.to_pylist()):
        meta = row.get("metadata") or {}
        if meta.get("source") == "olmo_4chan":
            chan.append(row["text"])
        elif meta.get("page_type") != "forum" and lang == "en":
            ordinary.append(row["text"])
    return ordinary, chan


def held_out_scores(model_path: Path, data: Path, record: dict) -> tuple[list[bool], np.ndarray]:
    """Truth and scores on the held-out split train_classifier kept back (same order, same seed)."""
    import pyarrow as pa

    from pipeline.classifier_train import prepare, read_labelled
    from pipeline.steps.classifier import TOXICITY_TRAINING, ClassifierFilter

    texts, labels, _ = read_labelled(data, TOXICITY_TRAINING["text_field"], TOXICITY_TRAINING["label_field"])
    prepared = prepare(texts, record["text_prep"])
    order = [i for i, line in enumerate(prepared) if line.strip()]
    random.Random(TOXICITY_TRAINING["seed"]).shuffle(order)
    hold = order[: int(round(len(order) * TOXICITY_TRAINING["holdout"]))]
    step = ClassifierFilter(model_path, name="toxicity")  # min_words 0: every held-out comment scored
    scores = step.scores(pa.array([texts[i] for i in hold], pa.large_string()))
    return [labels[i] == record["positive_label"] for i in hold], scores


def toxicity_report(shared: Path = SHARED, work: Path | None = None, rebuild: bool = True) -> dict:
    import pyarrow as pa

    from pipeline.classifier_train import file_digest, precision_recall_f1, roc_auc, sidecar_path
    from pipeline.steps.chain import load_filter_config
    from pipeline.steps.classifier import ClassifierFilter, ensure_toxicity_model

    config = load_filter_config()["toxicity"]
    threshold, min_words = config["threshold"], config.get("min_words", 3)
    data = shared / "toxicity" / "jigsaw_wiki_comments.jsonl.gz"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(work or tmp)
        start = cpu_seconds()
        model = ensure_toxicity_model(work / "a", data)
        train_cpu = cpu_seconds() - start
        record = json.loads(sidecar_path(model).read_text())
        digest = file_digest(model)
        same_bytes = file_digest(ensure_toxicity_model(work / "b", data)) == digest if rebuild else None
        truth, scores = held_out_scores(model, data, record)
        p, r, f1 = precision_recall_f1(truth, list(scores >= threshold))
        p5, r5, f5 = precision_recall_f1(truth, list(scores >= 0.5))
        ordinary, chan = ordinary_english_pages(shared)
        step = ClassifierFilter(model, name="toxicity", threshold=threshold, min_words=min_words)
        web = step.scores(pa.array(ordinary, pa.large_string()))
        chan_scores = step.scores(pa.array(chan, pa.large_string()))
        edge = step.scores(pa.array(["", "   ", "hello", "I love my mother"], pa.large_string()))
        scored = web[~np.isnan(web)]
        return {
            "data": data.name, "holdout_rows": len(truth), "holdout_toxic_share": round(float(np.mean(truth)), 4),
            "threshold": threshold, "min_words": min_words,
            "precision": p, "recall": r, "f1": f1, "roc_auc": roc_auc(truth, list(scores)),
            "at_0.5": {"precision": p5, "recall": r5, "f1": f5},
            "web_ordinary_english_pages": len(ordinary),
            "web_ordinary_dropped_share": round(float(np.mean(scored >= threshold)), 4),
            "web_ordinary_score_q": {q: round(float(np.quantile(scored, float(q))), 4) for q in ("0.5", "0.9", "0.99")},
            "web_4chan_pages": len(chan),
            "web_4chan_dropped_share": round(float(np.nanmean(np.where(np.isnan(chan_scores), 0, chan_scores >= threshold))), 4),
            "abstained": {"empty": bool(np.isnan(edge[0])), "blank": bool(np.isnan(edge[1])), "one_word": bool(np.isnan(edge[2]))},
            "i_love_my_mother": None if np.isnan(edge[3]) else round(float(edge[3]), 4),
            "train_cpu_s": round(train_cpu, 2), "model_bytes": model.stat().st_size, "model_sha256": digest,
            "rebuild_same_bytes": same_bytes, "params": record["params"],
        }


def pii_web_report(shared: Path = SHARED) -> dict:
    from pipeline.steps.pii import PIIScrubber
    from pipeline.steps.pii_labels import labelled_lines, score

    result = score(PIIScrubber(), labelled_lines(shared / "corpora" / "web" / "web_sample.jsonl.gz"))
    return {"lines": result["lines"], "by_kind": result["by_kind"], "wrong_lines": len(result["errors"])}


def main() -> None:
    tox = toxicity_report()
    print("toxicity", json.dumps(tox))
    pii = pii_web_report()
    for kind, fig in pii["by_kind"].items():
        print(f"pii_web {kind:12s} expected {fig['expected']:4d} precision {fig['precision']} recall {fig['recall']}")
    print(json.dumps({"toxicity": tox, "pii_web": pii}, sort_keys=True))


if __name__ == "__main__":
    main()
