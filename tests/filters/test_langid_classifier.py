"""Language ID with lid.176, the classifier training command and the classifier filter."""

from __future__ import annotations

import gzip
import json
import os

import pytest

from flows.cli import main as cli
from pipeline.steps.classifier import ClassifierFilter, ensure_toxicity_model
from pipeline.steps.langid import LanguageId
from tests.filters.conftest import docs, reason

EN = "The committee met on Tuesday to discuss the new budget and agreed to publish its report next month."
DE = "Der Ausschuss traf sich am Dienstag, um den neuen Haushalt zu besprechen, und wird den Bericht veröffentlichen."
FR = "Le comité s'est réuni mardi pour discuter du nouveau budget et publiera son rapport le mois prochain."


@pytest.fixture(scope="module")
def lid_model(shared):
    return shared / "models" / "lid.176.ftz"


def test_language_columns_and_allow_list(lid_model):
    step = LanguageId(lid_model, languages=["en", "de"])
    out = step(docs(EN, DE, FR, "", EN.replace(" ", "\n")))
    assert out.column("language").to_pylist() == ["en", "de", "en"]
    assert min(out.column("language_score").to_pylist()) > 0.65
    assert step.stats.dropped == {"not_allowed": 1, "empty": 1}


def test_per_language_threshold_and_annotate_only(lid_model):
    assert reason(LanguageId(lid_model, languages=["de"], thresholds={"de": 1.01}), docs(DE)) == ["low_score"]
    assert reason(LanguageId(lid_model, languages=None), docs(EN, FR, "")) == [None, None, None]


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="fastText model not found"):
        LanguageId(tmp_path / "nope.ftz")


def test_classifier_train_command(tmp_path, shared, capsys):
    rows = []
    with gzip.open(shared / "toxicity" / "davidson_tweets.jsonl.gz", "rt") as fh:
        for line in fh:
            rows.append(json.loads(line))
            if len(rows) == 3000:
                break
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("".join(json.dumps({"body": r["text"], "toxic": r["toxic"]}) + "\n" for r in rows) + "not json\n")
    model = tmp_path / "tox.ftz"
    rc = cli(["classifier", "train", "--input", str(labelled), "--text-field", "body", "--label-field", "toxic",
              "--output", str(model), "--quantize", "--holdout", "0.2"])
    out = capsys.readouterr().out
    assert rc == 0 and model.is_file() and "quantized" in out
    assert "2400 train, 600 held out, 1 skipped" in out
    record = json.loads(model.with_name("tox.ftz.json").read_text())
    assert record["positive_label"] == "true" and record["recall"] > 0.8 and record["precision"] > 0.8


def test_classifier_train_rejects_one_label(tmp_path, capsys):
    labelled = tmp_path / "one.jsonl"
    labelled.write_text("".join(json.dumps({"text": f"row {i}", "label": "a"}) + "\n" for i in range(10)))
    assert cli(["classifier", "train", "--input", str(labelled), "--output", str(tmp_path / "m.ftz")]) == 2
    assert "at least two labels" in capsys.readouterr().err


def test_toxicity_filter_and_cache(toxicity_model, shared):
    mtime = os.path.getmtime(toxicity_model)
    assert ensure_toxicity_model(toxicity_model.parent, shared / "toxicity" / "davidson_tweets.jsonl.gz") == toxicity_model
    assert os.path.getmtime(toxicity_model) == mtime  # cached, not retrained
    step = ClassifierFilter(toxicity_model, name="toxicity", threshold=0.9)
    table = docs("You are a stupid fucking bitch and a worthless piece of shit.",
                 "The library opens at nine on weekdays and the reading room is on the second floor.")
    out = step(table)
    assert step.stats.dropped == {"above_threshold": 1}
    assert out.column("toxicity_score")[0].as_py() < 0.9
    keep_toxic = ClassifierFilter(toxicity_model, name="toxicity", threshold=0.9, keep="above")
    assert reason(keep_toxic, table) == [None, "below_threshold"]
