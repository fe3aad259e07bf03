"""Filter benchmark (not a test): throughput per step and for the chain on the web sample,
PII precision/recall on presidio's cases, language-ID accuracy on UDHR lines, toxicity
precision/recall/F1 on a held-out split, and datatrove 0.10 side by side.

    python bench/filters.py [--datatrove-python /tmp/dtvenv/bin/python] [--repeat 1]

Figures are CPU seconds (getrusage of this process and its children), not wall time: the
machine is shared. The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHARED = Path(os.environ.get("TOKENMILL_SHARED") or Path(__file__).resolve().parents[2] / "shared")

# presidio entity -> our placeholder label (types we scrub)
PII_TYPES = {"EMAIL": "EMAIL", "PHONE": "PHONE", "IP": "IP_ADDRESS", "CREDIT_CARD": "CREDIT_CARD", "US_SSN": "SSN"}
# UDHR file codes (ISO 639-3, some with script/variant suffixes) -> lid.176 labels
UDHR_TO_LID = {
    "eng": "en", "deu": "de", "deu_1901": "de", "fra": "fr", "spa": "es", "ita": "it", "por_BR": "pt", "por_PT": "pt",
    "nld": "nl", "rus": "ru", "ukr": "uk", "bel": "be", "bul": "bg", "pol": "pl", "ces": "cs", "slk": "sk", "slv": "sl",
    "hrv": "hr", "srp_cyrl": "sr", "srp_latn": "sr", "bos_latn": "bs", "mkd": "mk", "ron": "ro", "hun": "hu", "fin": "fi",
    "est": "et", "lav": "lv", "lit": "lt", "swe": "sv", "dan": "da", "nob": "no", "nno": "nn", "isl": "is", "fao": "fo",
    "gle": "ga", "gla": "gd", "cym": "cy", "bre": "br", "eus": "eu", "cat": "ca", "glg": "gl", "ast": "ast", "oci": "oc",
    "ltz": "lb", "fur": "fur", "lat": "la", "epo": "eo", "ina": "ia", "ido": "io", "vec": "vec", "cos": "co", "roh": "rm",
    "ell_monotonic": "el", "tur": "tr", "azj_latn": "az", "uzn_latn": "uz", "kaz": "kk", "kir": "ky", "tat": "tt",
    "tuk_latn": "tk", "sah": "sah", "tyv": "tyv", "hye": "hy", "kat": "ka", "heb": "he", "ydd": "yi", "arb": "ar",
    "pes_1": "fa", "urd": "ur", "pnb": "pa", "hin": "hi", "mar": "mr", "ben": "bn", "guj": "gu", "pan": "pa", "nep": "ne",
    "tam": "ta", "tel": "te", "kan": "kn", "mal": "ml", "sin": "si", "tha": "th", "lao": "lo", "khm": "km", "mya": "my",
    "vie": "vi", "ind": "id", "mly_latn": "ms", "jav": "jv", "sun": "su", "tgl": "tl", "ceb": "ceb", "war": "war",
    "ilo": "ilo", "cmn_hans": "zh", "cmn_hant": "zh", "jpn": "ja", "kor": "ko", "khk": "mn", "bod": "bo", "amh": "am",
    "som": "so", "swh": "sw", "yor": "yo", "mlt": "mt", "afr": "af", "sco": "sco", "ckb": "ckb", "uig_arab": "ug",
    "tgk": "tg", "div": "dv", "hat_kreyol": "ht", "plt": "mg", "nds": "nds", "che": "ce", "oss": "os", "mri": "mi",
    "wln": "wa", "hsb": "hsb", "lad": "lad", "san": "sa", "bho": "bh", "mai": "mai", "als": "sq", "tet": "tet",
}


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def load_web(path: Path):
    from pipeline.schema import documents_from_pylist

    rows = []
    with gzip.open(path, "rt") as fh:
        for line in fh:
            row = json.loads(line)
            rows.append({"id": row["id"], "text": row["text"], "source": "web_sample"})
    return documents_from_pylist(rows)


def throughput(config: dict, table, repeat: int) -> dict:
    """Each step alone on the full sample, then the chain (steps see what earlier ones kept)."""
    from pipeline.steps.chain import build_chain

    n_docs, mb = table.num_rows, sum(len(t.encode()) for t in table.column("text").to_pylist()) / 1e6
    per_step = {}
    for name in config["order"]:
        if not config.get(name, {}).get("enabled", True):
            continue
        solo = dict(config, order=[name])
        step = build_chain(solo).steps[0]
        start = cpu_seconds()
        for _ in range(repeat):
            step(table)
        cpu = (cpu_seconds() - start) / repeat
        per_step[name] = {"cpu_s": round(cpu, 3), "docs_per_cpu_s": round(n_docs / cpu, 1), "mb_per_cpu_s": round(mb / cpu, 2)}
    chains = {}
    for label, order in (("comparable", ["gopher_repetition", "gopher_quality", "c4", "fineweb", "pii"]), ("full", config["order"])):
        chain = build_chain(dict(config, order=order))
        start = cpu_seconds()
        for _ in range(repeat):
            out = chain(table)
        cpu = (cpu_seconds() - start) / repeat
        chains[label] = {"cpu_s": round(cpu, 3), "docs_per_cpu_s": round(n_docs / cpu, 1), "mb_per_cpu_s": round(mb / cpu, 2),
                         "kept": out.num_rows, "kept_ids": out.column("id").to_pylist(),
                         "dropped": dict(Counter(chain.dropped()).most_common())}
    return {"docs": n_docs, "mb": round(mb, 2), "per_step": per_step, "chains": chains}


def pii_accuracy(path: Path) -> dict:
    """Span-level precision/recall per entity type (a prediction counts when it overlaps an
    expected span of its type); IPs scored with private addresses included, as presidio does."""
    from pipeline.steps.pii import PIIScrubber

    scrubber = PIIScrubber(public_ips_only=False)
    tp, fp, fn = Counter(), Counter(), Counter()
    for line in path.open():
        case = json.loads(line)
        ours = PII_TYPES.get(case["entity"])
        expected = [tuple(s) for s in case["spans"]] if case["spans"] else ([(0, len(case["text"]))] * case["expected_len"] if case["expected_len"] else [])
        found = scrubber.find(case["text"])
        for label in PII_TYPES.values():
            pred = [(s, e) for s, e, lab in found if lab == label]
            exp = expected if label == ours else []
            hit_exp = sum(any(s < e2 and s2 < e for s2, e2 in pred) for s, e in exp)
            hit_pred = sum(any(s < e2 and s2 < e for s2, e2 in exp) for s, e in pred)
            tp[label] += hit_exp
            fn[label] += len(exp) - hit_exp
            fp[label] += len(pred) - hit_pred
    out = {}
    for label in PII_TYPES.values():
        p = tp[label] / (tp[label] + fp[label]) if tp[label] + fp[label] else 0.0
        r = tp[label] / (tp[label] + fn[label]) if tp[label] + fn[label] else 0.0
        out[label] = {"precision": round(p, 3), "recall": round(r, 3), "tp": tp[label], "fp": fp[label], "fn": fn[label]}
    return out


def lid_accuracy(path: Path, model_path: Path) -> dict:
    import pyarrow as pa

    from pipeline.steps.langid import LanguageId

    step = LanguageId(model_path, languages=None)
    covered = {label.removeprefix("__label__") for label in step.model.get_labels()}
    texts, truth = [], []
    with gzip.open(path, "rt") as fh:
        for line in fh:
            row = json.loads(line)
            lang = UDHR_TO_LID.get(row["lang"])
            if lang in covered and row["text"].strip():
                texts.append(row["text"])
                truth.append(lang)
    start = cpu_seconds()
    predicted, _ = step.predict(pa.array(texts, pa.large_string()))
    cpu = cpu_seconds() - start
    predicted = predicted.to_pylist()
    per_lang = Counter(truth)
    correct = Counter(t for t, p in zip(truth, predicted) if t == p)
    worst = sorted(((correct[l] / n, l) for l, n in per_lang.items()))[:5]
    return {"lines": len(texts), "languages": len(per_lang), "accuracy": round(sum(correct.values()) / len(texts), 4),
            "macro_accuracy": round(sum(correct[l] / n for l, n in per_lang.items()) / len(per_lang), 4),
            "worst": {l: round(a, 3) for a, l in worst}, "lines_per_cpu_s": round(len(texts) / cpu, 1)}


def toxicity_accuracy(data: Path, work: Path) -> dict:
    from pipeline.classifier_train import train_classifier

    start = cpu_seconds()
    result = train_classifier(data, work / "toxicity.ftz", text_field="text", label_field="toxic", holdout=0.1)
    return {"precision": result.precision, "recall": result.recall, "f1": result.f1, "holdout_rows": result.holdout_rows,
            "train_cpu_s": round(cpu_seconds() - start, 2), "model_bytes": (work / "toxicity.ftz").stat().st_size}


DATATROVE_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    from datatrove.executor.local import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.filters import GopherRepetitionFilter, GopherQualityFilter, C4QualityFilter, FineWebQualityFilter
    from datatrove.pipeline.formatters import PIIFormatter
    from datatrove.pipeline.writers import JsonlWriter
    data_dir, name, out_dir, logs = sys.argv[1:5]
    LocalPipelineExecutor(pipeline=[
        JsonlReader(data_dir, glob_pattern=name, id_key="id"),
        GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(), FineWebQualityFilter(), PIIFormatter(),
        JsonlWriter(out_dir, output_filename="kept.jsonl", compression=None),
    ], tasks=1, workers=1, logging_dir=logs).run()
""")


def run_datatrove(python: str, web: Path, work: Path) -> dict:
    script = work / "dt_pipeline.py"
    script.write_text(DATATROVE_SCRIPT)
    out_dir = work / "dt_out"
    env = dict(os.environ, NLTK_DATA=str(work / "nltk_data"))
    nltk_src = SHARED / "bench" / "nltk_data"
    if nltk_src.exists():
        subprocess.run(["cp", "-r", str(nltk_src), str(work / "nltk_data")], check=True)
        subprocess.run(["chmod", "-R", "go-w", str(work / "nltk_data")], check=True)
    start = cpu_seconds()
    proc = subprocess.run([python, str(script), str(web.parent), web.name, str(out_dir), str(work / "dt_logs")],
                          env=env, capture_output=True, text=True)
    cpu = cpu_seconds() - start
    if proc.returncode != 0:
        raise RuntimeError(f"datatrove failed: {proc.stderr[-2000:]}")
    kept = [json.loads(line)["id"] for line in (out_dir / "kept.jsonl").open()]
    return {"cpu_s": round(cpu, 2), "kept": len(kept), "kept_ids": kept}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(SHARED))
    parser.add_argument("--datatrove-python", default=os.environ.get("TOKENMILL_DATATROVE_PYTHON") or ("/tmp/dtvenv/bin/python" if Path("/tmp/dtvenv/bin/python").exists() else None))
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    shared = Path(args.shared)
    web = shared / "corpora" / "web" / "web_sample.jsonl.gz"

    from pipeline.steps.chain import load_filter_config

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.setdefault("TOKENMILL_HOME", str(work / "home"))
        config = load_filter_config()
        config["langid"]["model"] = str(shared / "models" / "lid.176.ftz")
        config["toxicity"]["data"] = str(shared / "toxicity" / "davidson_tweets.jsonl.gz")
        table = load_web(web)
        # warm the toxicity model cache outside the timed runs
        from pipeline.steps.classifier import ensure_toxicity_model

        config["toxicity"]["model"] = str(ensure_toxicity_model(config["toxicity"]["cache_dir"], config["toxicity"]["data"]))

        speed = throughput(config, table, args.repeat)
        for name, fig in speed["per_step"].items():
            print(f"step {name:18s} {fig['docs_per_cpu_s']:8.1f} docs/cpu-s {fig['mb_per_cpu_s']:7.2f} MB/cpu-s")
        for name, fig in speed["chains"].items():
            print(f"chain {name:17s} {fig['docs_per_cpu_s']:8.1f} docs/cpu-s {fig['mb_per_cpu_s']:7.2f} MB/cpu-s kept {fig['kept']}/{speed['docs']}")
        pii = pii_accuracy(shared / "pii" / "presidio_cases.jsonl")
        print("pii", json.dumps(pii))
        lid = lid_accuracy(shared / "langid" / "udhr2_lines.jsonl.gz", shared / "models" / "lid.176.ftz")
        print("lid", json.dumps(lid))
        tox = toxicity_accuracy(shared / "toxicity" / "davidson_tweets.jsonl.gz", work)
        print("toxicity", json.dumps(tox))

        comparable = speed["chains"]["comparable"]
        datatrove, ratio, agreement = None, None, None
        if args.datatrove_python and Path(args.datatrove_python).exists():
            datatrove = run_datatrove(args.datatrove_python, web, work)
            datatrove["docs_per_cpu_s"] = round(speed["docs"] / datatrove["cpu_s"], 2)
            ratio = round(comparable["docs_per_cpu_s"] / datatrove["docs_per_cpu_s"], 1)
            ours, theirs = set(comparable["kept_ids"]), set(datatrove.pop("kept_ids"))
            all_ids = table.column("id").to_pylist()
            agreement = round(sum((i in ours) == (i in theirs) for i in all_ids) / len(all_ids), 4)
            print(f"datatrove {datatrove['docs_per_cpu_s']} docs/cpu-s, kept {datatrove['kept']}; ours {comparable['docs_per_cpu_s']} "
                  f"docs/cpu-s, kept {comparable['kept']}: ratio {ratio}x, keep/drop agreement {agreement}")
        else:
            print("datatrove: not available (pass --datatrove-python), comparison skipped")
        for fig in speed["chains"].values():
            fig.pop("kept_ids")
        print(json.dumps({
            "docs": speed["docs"], "mb": speed["mb"],
            "docs_per_cpu_s": comparable["docs_per_cpu_s"], "mb_per_cpu_s": comparable["mb_per_cpu_s"],
            "full_chain_docs_per_cpu_s": speed["chains"]["full"]["docs_per_cpu_s"],
            "ratio_vs_datatrove": ratio, "datatrove": datatrove, "keep_agreement_vs_datatrove": agreement,
            "per_step": speed["per_step"], "chains": speed["chains"],
            "pii": pii, "lid": lid, "toxicity": tox,
        }, sort_keys=True))


if __name__ == "__main__":
    main()
