"""Language ID with lid.176, the classifier training command and the classifier filter."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.cli import main as cli
from model.metrics import write_json_atomic
from pipeline.classifier_train import sidecar_path
from pipeline.steps.classifier import DEFAULT_THRESHOLD, ClassifierFilter, ensure_toxicity_model, toxicity_model_path, training_lock
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


def test_allow_list_is_checked_against_the_model_labels(lid_model, caplog):
    NO = "Komiteen møttes tirsdag for å diskutere det nye budsjettet og vil publisere rapporten sin neste måned."
    with caplog.at_level("WARNING", logger="pipeline.steps.langid"):
        step = LanguageId(lid_model, languages=["en", "nb"], thresholds={"nb": 0.5})
    assert step.languages == ["en", "no"] and step.thresholds == {"no": 0.5}
    assert any("'nb' read as 'no'" in note for note in step.notes) and "read as 'no'" in caplog.text
    assert reason(step, docs(NO, EN)) == [None, None]  # Norwegian is kept, not silently dropped
    with pytest.raises(ValueError, match=r"'english'.*not among the 176 labels"):
        LanguageId(lid_model, languages=["english"])
    with pytest.raises(ValueError, match=r"did you mean"):
        LanguageId(lid_model, languages=["en", "frr_x"])


def test_unicode_whitespace_is_normalised_before_prediction(lid_model):
    step = LanguageId(lid_model, languages=["en"])
    for space in ("\u00a0", "\u2009", "\u3000", "\u2028", "\u202f"):
        out = step(docs(EN.replace(" ", space)))
        assert out.column("language").to_pylist() == ["en"], repr(space)


def test_short_documents_get_und_and_the_configured_policy(lid_model):
    short_texts = ("Hola", "ok\u00a0thanks", "Merci  beaucoup")
    kept = LanguageId(lid_model, languages=["en"], min_chars=20)
    out = kept(docs(*short_texts, FR, "  \u00a0 "))
    assert out.column("language").to_pylist() == ["und"] * 3 and out.column("language_score").to_pylist() == [0.0] * 3
    assert kept.stats.dropped == {"not_allowed": 1, "empty": 1}
    dropped = LanguageId(lid_model, languages=["en"], min_chars=20, short="drop")
    assert reason(dropped, docs(*short_texts, EN)) == ["too_short"] * 3 + [None]
    assert reason(LanguageId(lid_model, languages=["es"], min_chars=0), docs("Hola amigos, ¿qué tal?")) == [None]
    with pytest.raises(ValueError, match="short must be one of"):
        LanguageId(lid_model, short="maybe")


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
    assert ensure_toxicity_model(toxicity_model.parent, shared / "toxicity" / "jigsaw_wiki_comments.jsonl.gz") == toxicity_model
    assert os.path.getmtime(toxicity_model) == mtime  # cached, not retrained
    step = ClassifierFilter(toxicity_model, name="toxicity", threshold=DEFAULT_THRESHOLD, min_words=3)
    table = docs("You are a stupid fucking bitch and a worthless piece of shit.",
                 "The library opens at nine on weekdays and the reading room is on the second floor.")
    out = step(table)
    assert step.stats.dropped == {"above_threshold": 1}
    assert out.column("toxicity_score")[0].as_py() < 0.2
    keep_toxic = ClassifierFilter(toxicity_model, name="toxicity", threshold=DEFAULT_THRESHOLD, keep="above")
    assert reason(keep_toxic, table) == [None, "below_threshold"]


def blocked_on_a_file_lock(pid: int) -> bool:
    """Whether `pid` waits for an flock (a `->` line of /proc/locks)."""
    return any(f[1] == "->" and f[2] == "FLOCK" and f[5] == str(pid) for f in map(str.split, Path("/proc/locks").read_text().splitlines()))


def test_a_first_use_waits_for_the_training_in_progress_and_reuses_its_model(toxicity_model, shared, tmp_path):
    """Two refreshes starting together both trained the model, and the second rewrote the
    sidecar while the first's filters read it: a scheduled refresh failed with a
    JSONDecodeError. Now the second waits for the first and takes its model as it is."""
    data = shared / "toxicity" / "jigsaw_wiki_comments.jsonl.gz"
    cache = tmp_path / "models"
    cache.mkdir()
    target = toxicity_model_path(cache, data)
    program = "import sys; from pipeline.steps.classifier import ensure_toxicity_model; print(ensure_toxicity_model(*sys.argv[1:]))"
    with training_lock(target):  # another process is training it
        child = subprocess.Popen([sys.executable, "-c", program, str(cache), str(data)], stdout=subprocess.PIPE, text=True,
                                 cwd=Path(__file__).resolve().parents[2])  # fmt: skip
        deadline = time.monotonic() + 180  # an import of pyarrow and fastText on a loaded machine
        while not blocked_on_a_file_lock(child.pid):
            assert child.poll() is None and time.monotonic() < deadline, "the second process did not wait for the first"
            time.sleep(0.2)
        write_json_atomic(sidecar_path(target), json.loads(sidecar_path(toxicity_model).read_text()))
        shutil.copy(toxicity_model, target)
        trained = (target.stat().st_ino, sidecar_path(target).stat().st_ino)
    out, _ = child.communicate(timeout=120)
    assert child.returncode == 0 and out.strip() == str(target)
    assert (target.stat().st_ino, sidecar_path(target).stat().st_ino) == trained  # reused, not trained again


def test_a_sidecar_is_replaced_whole_never_rewritten_in_place(tmp_path):
    model = tmp_path / "m.ftz"
    write_json_atomic(sidecar_path(model), {"positive_label": "a"})
    with open(sidecar_path(model)) as reader:  # a filter in another process, loading the model
        write_json_atomic(sidecar_path(model), {"positive_label": "b"})
        assert json.loads(reader.read()) == {"positive_label": "a"}
    assert json.loads(sidecar_path(model).read_text()) == {"positive_label": "b"}
    assert [p.name for p in tmp_path.iterdir()] == ["m.ftz.json"]


def test_toxicity_abstains_on_text_too_short_to_judge(toxicity_model):
    step = ClassifierFilter(toxicity_model, name="toxicity", threshold=DEFAULT_THRESHOLD, min_words=3)
    for keep in ("below", "above"):  # abstaining keeps the document whichever side is kept
        step.keep = keep
        assert reason(step, docs("", "   \n ", "idiot", "stupid idiot")) == [None] * 4
    step = ClassifierFilter(toxicity_model, name="toxicity", threshold=DEFAULT_THRESHOLD, min_words=3)
    out = step(docs("", "stupid idiot", "The library opens at nine on weekdays."))
    assert out.column("toxicity_score").to_pylist()[:2] == [None, None]
    assert step.stats.counters["abstained"] == 2
    with pytest.raises(ValueError, match="min_words"):
        ClassifierFilter(toxicity_model, name="toxicity", min_words=-1)


def test_default_toxicity_model_figures(toxicity_model):
    """The default model on the held-out 10 % of comments it never saw (figures from training)."""
    record = json.loads(toxicity_model.with_name(toxicity_model.name + ".json").read_text())
    assert record["holdout_rows"] > 2500 and record["positive_label"] == "true"
    assert record["f1"] >= 0.80 and record["roc_auc"] >= 0.90, record
