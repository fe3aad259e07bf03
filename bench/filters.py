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


def toxicity_accuracy(shared: Path, work: Path) -> dict:
    """The default toxicity model: held-out P/R/F1/ROC-AUC, web-sample drop rates, reproducible
    build (H13cls's part, bench/filters_cls.py)."""
    from bench.filters_cls import toxicity_report

    return toxicity_report(shared, work / "toxicity")


def pii_web_accuracy(shared: Path) -> dict:
    """PII precision/recall per kind on 700 labelled real web lines (bench/filters_cls.py)."""
    from bench.filters_cls import pii_web_report

    return pii_web_report(shared)


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


# --- agreement with datatrove 0.10.1, per filter and for the chain, in both readings --------
# Both sides see the web sample row by row (ids can repeat, so rows are matched by position),
# each filter alone on the raw text, then the chain Gopher repetition -> Gopher quality -> C4
# -> FineWeb (each on what the previous kept and rewrote; composed from the single runs, which
# is exact because each filter is a function of the text alone, plus FineWeb on C4's rewritten
# text). A row agrees when both keep it with the same text or both drop it. CPU time:
# getrusage around the filtering only (reading and loading spaCy excluded), the same way on
# both sides (the chain: the sum of its runs), with our word cache cleared before each run.

AGREEMENT_FILTERS = ("gopher_repetition", "gopher_quality", "c4", "fineweb")

DATATROVE_AGREEMENT_SCRIPT = textwrap.dedent("""
    import gzip, hashlib, json, os, resource, sys

    from datatrove.data import Document
    from datatrove.pipeline.filters import C4QualityFilter, FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter

    def cpu():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def sha(text):
        return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()

    path, out_path = sys.argv[1:3]
    texts = [json.loads(line)["text"] or "" for line in gzip.open(path, "rt", encoding="utf-8")]
    result = json.load(open(out_path)) if os.path.exists(out_path) else {"docs": len(texts), "per_filter": {}, "cpu_s": {}}
    GopherQualityFilter().filter(Document(text="warm up the tokenizer.", id="w"))  # loading spaCy is not filtering

    def run(name, flt, rows, source):
        keep, out_text = {}, {}
        start = cpu()
        for i in rows:
            doc = Document(text=source[i], id=str(i))
            verdict = flt.filter(doc)
            keep[i] = verdict if isinstance(verdict, bool) else bool(verdict[0])
            out_text[i] = doc.text if keep[i] else None
        return keep, out_text, cpu() - start

    everyone = range(len(texts))
    c4_text = None
    only = sys.argv[3].split(",") if len(sys.argv) > 3 else None  # a subset of the filters (e.g. to run in parallel)
    for name, make in (("gopher_quality", GopherQualityFilter), ("fineweb", FineWebQualityFilter),
                       ("c4", C4QualityFilter), ("gopher_repetition", GopherRepetitionFilter)):  # cheapest first
        if name in result["per_filter"] or (only and name not in only):
            continue
        keep, out_text, seconds = run(name, make(), everyone, texts)
        if name == "c4":
            c4_text = out_text  # the chain's FineWeb step reads C4's rewritten text
        if name not in result["per_filter"]:
            result["cpu_s"][name] = seconds
            result["per_filter"][name] = {"keep": [keep[i] for i in everyone],
                                          "text_sha1": [None if t is None else sha(t) for t in (out_text[i] for i in everyone)]}
            json.dump(result, open(out_path, "w"))  # after each filter: a partial result is reused
    # the chain: each filter is a function of the text alone, so Gopher repetition -> quality -> C4
    # keeps what all three keep alone; FineWeb then reads C4's rewritten text (run on every page
    # C4 keeps, so this part does not wait for Gopher repetition)
    pf = result["per_filter"]
    if "fineweb_after_c4" not in pf:
        if c4_text is None:
            c4_text = run("c4", C4QualityFilter(), everyone, texts)[1]
        kept = [i for i in everyone if pf["c4"]["keep"][i]]
        keep, out_text, seconds = run("fineweb_after_c4", FineWebQualityFilter(), kept, c4_text)
        result["cpu_s"]["fineweb_after_c4"] = seconds
        pf["fineweb_after_c4"] = {"keep": [keep.get(i, False) for i in everyone],
                                  "text_sha1": [sha(out_text[i]) if keep.get(i) else None for i in everyone]}
        json.dump(result, open(out_path, "w"))
    if "gopher_repetition" not in pf:
        sys.exit(0)
    steps = ("gopher_repetition", "gopher_quality", "c4", "fineweb_after_c4")
    chain_keep = [all(pf[n]["keep"][i] for n in steps) for i in everyone]
    result["cpu_s"]["chain"] = sum(result["cpu_s"][n] for n in steps)
    pf["chain"] = {"keep": chain_keep, "text_sha1": [pf["fineweb_after_c4"]["text_sha1"][i] if k else None for i, k in enumerate(chain_keep)]}
    json.dump(result, open(out_path, "w"))
""")


def _sha1(text: str) -> str:
    import hashlib

    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()


def datatrove_agreement_side(python: str | None, web: Path, work: Path, cached: Path | None = None) -> dict:
    """datatrove's keep/drop and output-text hash per row and filter. With `cached`, a finished
    run saved there is reused and a partial one is completed (the file is written as it goes)."""
    out = cached if cached is not None else work / "dt_agreement.json"
    if out.exists() and "chain" in json.loads(out.read_text())["per_filter"]:
        return json.loads(out.read_text())
    if not (python and Path(python).exists()):
        raise RuntimeError(f"datatrove results in {out} are incomplete and no --datatrove-python was given")
    script = work / "dt_agreement.py"
    script.write_text(DATATROVE_AGREEMENT_SCRIPT)
    proc = subprocess.run([python, str(script), str(web), str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"datatrove failed: {proc.stderr[-2000:]}")
    return json.loads(out.read_text())


def tokenmill_agreement_side(web: Path, reference: str) -> dict:
    """Our keep/drop and output-text hash per row, each filter alone and the chain."""
    from pipeline.schema import documents_from_pylist
    from pipeline.steps.chain import build_chain, load_filter_config

    rows = []
    with gzip.open(web, "rt", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            rows.append({"id": str(i), "text": json.loads(line)["text"] or "", "source": "web_sample"})
    table = documents_from_pylist(rows)
    config = load_filter_config({name: {"reference": reference} for name in AGREEMENT_FILTERS})
    if reference == "datatrove":
        from pipeline.steps.spacy_words import clear_cache, english

        english()  # loading spaCy is not filtering
    result = {"docs": len(rows), "per_filter": {}, "cpu_s": {}}
    outputs = {}

    def run(name: str, step_name: str, table):
        step = build_chain(dict(config, order=[step_name])).steps[0]
        if reference == "datatrove":
            clear_cache()
        start = cpu_seconds()
        out = step(table)
        result["cpu_s"][name] = cpu_seconds() - start
        keep, text = [False] * len(rows), [None] * len(rows)
        for row_id, row_text in zip(out.column("id").to_pylist(), out.column("text").to_pylist()):
            keep[int(row_id)] = True
            text[int(row_id)] = _sha1(row_text or "")
        result["per_filter"][name] = {"keep": keep, "text_sha1": text}
        outputs[name] = out

    for name in AGREEMENT_FILTERS:
        run(name, name, table)
    # the chain, composed as on datatrove's side: FineWeb on C4's rewritten text of every page C4
    # keeps; the chain keeps what Gopher repetition, Gopher quality, C4 and that run all keep
    pf = result["per_filter"]
    run("fineweb_after_c4", "fineweb", outputs["c4"])
    steps = ("gopher_repetition", "gopher_quality", "c4", "fineweb_after_c4")
    chain_keep = [all(pf[n]["keep"][i] for n in steps) for i in range(len(rows))]
    result["cpu_s"]["chain"] = sum(result["cpu_s"][n] for n in steps)
    final_text = pf["fineweb_after_c4"]["text_sha1"]
    pf["chain"] = {"keep": chain_keep, "text_sha1": [final_text[i] if k else None for i, k in enumerate(chain_keep)]}
    return result


def agreement_table(ours: dict, theirs: dict) -> dict:
    """Per filter and chain: share of rows with the same decision (and text, where kept),
    disagreements by direction, and the CPU-time ratio."""
    out = {}
    for name in (*AGREEMENT_FILTERS, "chain"):
        a, b = ours["per_filter"][name], theirs["per_filter"][name]
        n = len(b["keep"])
        same = sum(ka == kb and (not ka or ta == tb) for ka, kb, ta, tb in zip(a["keep"], b["keep"], a["text_sha1"], b["text_sha1"]))
        out[name] = {
            "agreement": round(same / n, 4),
            "decision_agreement": round(sum(ka == kb for ka, kb in zip(a["keep"], b["keep"])) / n, 4),  # keep/drop only
            "we_keep_they_drop": sum(ka and not kb for ka, kb in zip(a["keep"], b["keep"])),
            "we_drop_they_keep": sum(kb and not ka for ka, kb in zip(a["keep"], b["keep"])),
            "text_differs": sum(ka and kb and ta != tb for ka, kb, ta, tb in zip(a["keep"], b["keep"], a["text_sha1"], b["text_sha1"])),
            "kept_ours": sum(a["keep"]), "kept_datatrove": sum(b["keep"]),
            "cpu_s_ours": round(ours["cpu_s"][name], 2), "cpu_s_datatrove": round(theirs["cpu_s"][name], 2),
            "speedup": round(theirs["cpu_s"][name] / max(ours["cpu_s"][name], 1e-9), 1),
        }
    return out


def agreement_report(python: str | None, web: Path, work: Path, cached: Path | None = None) -> dict | None:
    """Agreement of both readings with datatrove 0.10.1 (None when datatrove is not available)."""
    if not (python and Path(python).exists()) and not (cached and cached.exists()):
        print("agreement: datatrove not available (pass --datatrove-python), skipped")
        return None
    theirs = datatrove_agreement_side(python, web, work, cached)
    report = {}
    for reference in ("datatrove", "paper"):
        table = agreement_table(tokenmill_agreement_side(web, reference), theirs)
        report[reference] = table
        for name, fig in table.items():
            print(f"agreement reference={reference:9s} {name:18s} {fig['agreement']:.4f} (decision {fig['decision_agreement']:.4f}) "
                  f"(+{fig['we_keep_they_drop']} -{fig['we_drop_they_keep']} text {fig['text_differs']}) "
                  f"cpu {fig['cpu_s_ours']:.2f}s vs {fig['cpu_s_datatrove']:.2f}s")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(SHARED))
    parser.add_argument("--datatrove-python", default=os.environ.get("TOKENMILL_DATATROVE_PYTHON") or ("/tmp/dtvenv/bin/python" if Path("/tmp/dtvenv/bin/python").exists() else None))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--datatrove-results", default=None,
                        help="a JSON file caching datatrove's per-row results for the agreement (written when missing)")
    parser.add_argument("--agreement-only", action="store_true", help="only the agreement with datatrove, both readings")
    args = parser.parse_args()
    shared = Path(args.shared)
    web = shared / "corpora" / "web" / "web_sample.jsonl.gz"
    cached = Path(args.datatrove_results) if args.datatrove_results else None
    if args.agreement_only:
        with tempfile.TemporaryDirectory() as tmp:
            report = agreement_report(args.datatrove_python, web, Path(tmp), cached)
        print(json.dumps({"agreement": report}, sort_keys=True))
        return

    from pipeline.steps.chain import load_filter_config

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.setdefault("TOKENMILL_HOME", str(work / "home"))
        config = load_filter_config()
        config["langid"]["model"] = str(shared / "models" / "lid.176.ftz")
        config["toxicity"]["data"] = str(shared / "toxicity" / "jigsaw_wiki_comments.jsonl.gz")
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
        pii["web_lines"] = pii_web_accuracy(shared)
        print("pii", json.dumps(pii))
        lid = lid_accuracy(shared / "langid" / "udhr2_lines.jsonl.gz", shared / "models" / "lid.176.ftz")
        print("lid", json.dumps(lid))
        tox = toxicity_accuracy(shared, work)
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
        agreement_by_reference = agreement_report(args.datatrove_python, web, work, cached)
        for fig in speed["chains"].values():
            fig.pop("kept_ids")
        print(json.dumps({
            "docs": speed["docs"], "mb": speed["mb"],
            "docs_per_cpu_s": comparable["docs_per_cpu_s"], "mb_per_cpu_s": comparable["mb_per_cpu_s"],
            "full_chain_docs_per_cpu_s": speed["chains"]["full"]["docs_per_cpu_s"],
            "ratio_vs_datatrove": ratio, "datatrove": datatrove, "keep_agreement_vs_datatrove": agreement,
            "per_step": speed["per_step"], "chains": speed["chains"],
            "pii": pii, "lid": lid, "toxicity": tox, "agreement": agreement_by_reference,
        }, sort_keys=True))


if __name__ == "__main__":
    main()
