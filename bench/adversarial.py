"""Hostile-input benchmark (not a test): is every filter step linear-time on any input?

    python bench/adversarial.py [--mb 1.0] [--ordinary-docs 400]

For each step of the default chain (plus the bad-words blocklist, off by default), CPU
seconds per MB on generated hostile pages divided by CPU seconds per MB on ordinary pages of
the web sample, both measured in this process the same way (getrusage). A step whose cost
grows faster than its input shows up as a ratio that grows with `--mb`; a linear one stays
flat. Hostile pages (each about `--mb` MB; the single line is 5x that):

- `key_headers`   `-----BEGIN PRIVATE KEY-----` repeated without a footer (issue 12: 130 CPU-s for 34 KB)
- `single_line`   one line of prose words without a newline
- `newlines`      nothing but newlines
- `digit_runs`    long runs of digits, dashes and dots (phones, cards, IPs, versions)
- `at_runs`       `@`-runs and `a@a@a...` (e-mail local parts)
- `nested_markup` deeply nested `<div>`/`{`/`(` markup
- `repeated_word` one word repeated (n-gram statistics, duplicate lines)
- `obfuscated`    "x (at) y (dot) " repeated (obfuscated e-mail candidates)

Each hostile page runs alone, under the step's usual CPU budget; a page the budget gives up
on (`timeout`) is reported and its CPU counts in the ratio. The last line printed is one JSON
object: {"worst_ratio": ..., "by_step": {step: {"ratio": ..., "worst_page": ..., ...}}}.
Each figure is the least CPU of `--repeat` runs (the machine may be shared).
Target: worst_ratio <= 10.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHARED = Path(os.environ.get("TOKENMILL_SHARED") or Path(__file__).resolve().parents[2] / "shared")


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def hostile_pages(mb: float) -> dict[str, str]:
    n = int(mb * 1_000_000)

    def fill(unit: str, size: int = n) -> str:
        return (unit * (size // len(unit) + 1))[:size]

    return {
        "key_headers": fill("-----BEGIN PRIVATE KEY-----\n"),
        "key_headers_one_line": fill("-----BEGIN RSA PRIVATE KEY-----"),
        "single_line": fill("the quick brown fox jumps over the lazy dog and keeps running ", 5 * n),
        "newlines": "\n" * n,
        "digit_runs": fill("0123456789"),
        "digit_groups": fill("12-34-56.78.90 +1 (415) 555 "),
        "at_runs": fill("@"),
        "at_words": fill("a@a@a.a."),
        "nested_markup": fill("<div>", n // 2) + fill("</div>", n // 2),
        "nested_brackets": fill("{[(", n // 2) + fill(")]}", n // 2),
        "repeated_word": fill("word "),
        "obfuscated": fill("john (at) example (dot) "),
        "password_runs": fill("password=password=1 "),
        "dotted_quads": fill("1.2.3.4.5.6.7.8.9."),
    }


def ordinary_table(n_docs: int):
    from pipeline.schema import documents_from_pylist

    rows = []
    with gzip.open(SHARED / "corpora" / "web" / "web_sample.jsonl.gz", "rt") as fh:
        for i, line in enumerate(fh):
            if i % 2 == 0:  # every other page: all sources and languages
                row = json.loads(line)
                rows.append({"id": row["id"], "text": row["text"], "source": "web_sample"})
            if len(rows) == n_docs:
                break
    return documents_from_pylist(rows)


def build_steps(shared: Path) -> dict:
    from pipeline.steps.chain import build_chain, load_filter_config

    config = load_filter_config()
    config["langid"]["model"] = str(shared / "models" / "lid.176.ftz")
    config["blocklist"]["enabled"] = True
    config["blocklist"]["words_file"] = str(shared / "toxicity" / "ldnoobw" / "en")
    steps = {}
    for name in config["order"]:
        section = dict(config.get(name) or {}, enabled=True)  # steps off by default are measured too
        steps[name] = build_chain(dict(config, order=[name], **{name: section})).steps[0]
    return steps


def cost(step, table, repeat: int = 1) -> float:
    """CPU seconds of one run of the step over the table: the least of `repeat` runs (the
    machine is shared; the minimum is the run least disturbed by other processes)."""
    best = float("inf")
    for _ in range(repeat):
        start = cpu_seconds()
        step(table)
        best = min(best, cpu_seconds() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=1.0, help="size of each hostile page in MB (the single line: 5x)")
    parser.add_argument("--ordinary-docs", type=int, default=400, help="web-sample pages for the baseline")
    parser.add_argument("--steps", default=None, help="comma-separated step names (default: all)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the least CPU counts")
    args = parser.parse_args()

    from pipeline.schema import documents_from_pylist

    steps = build_steps(SHARED)
    if args.steps:
        steps = {k: v for k, v in steps.items() if k in args.steps.split(",")}
    ordinary = ordinary_table(args.ordinary_docs)
    ordinary_mb = sum(len(t.encode()) for t in ordinary.column("text").to_pylist()) / 1e6
    pages = hostile_pages(args.mb)
    by_step = {}
    for name, step in steps.items():
        step(ordinary.slice(0, 20))  # warm caches (models, compiled patterns) outside the timings
        base = cost(step, ordinary, args.repeat) / ordinary_mb
        per_page = {}
        for page, text in pages.items():
            table = documents_from_pylist([{"id": page, "text": text, "source": "hostile"}])
            timeouts = step.stats.dropped.get("timeout", 0)
            seconds = cost(step, table, args.repeat)
            mb = len(text.encode()) / 1e6
            per_page[page] = {"cpu_s": round(seconds, 3), "cpu_s_per_mb": round(seconds / mb, 4),
                              "timeout": step.stats.dropped.get("timeout", 0) > timeouts}
        worst = max(per_page, key=lambda p: per_page[p]["cpu_s_per_mb"])
        ratio = per_page[worst]["cpu_s_per_mb"] / base if base > 0 else float("inf")
        by_step[name] = {"ratio": round(ratio, 2), "worst_page": worst, "ordinary_cpu_s_per_mb": round(base, 4),
                         "worst_cpu_s_per_mb": per_page[worst]["cpu_s_per_mb"],
                         "timeouts": sorted(p for p, fig in per_page.items() if fig["timeout"]), "pages": per_page}
        print(f"{name:18s} ordinary {base:8.4f} s/MB  worst {per_page[worst]['cpu_s_per_mb']:8.4f} s/MB ({worst})  ratio {ratio:6.2f}",
              flush=True)
    worst_ratio = max(fig["ratio"] for fig in by_step.values())
    print(json.dumps({"worst_ratio": worst_ratio, "mb": args.mb, "ordinary_mb": round(ordinary_mb, 2), "by_step": by_step},
                     sort_keys=True))


if __name__ == "__main__":
    main()
