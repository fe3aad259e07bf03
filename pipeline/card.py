"""Dataset cards: a markdown page with plots beside each sealed refresh version.

`<version>/card.md` links `card/*.png`: documents and tokens per source, the language mix,
the document-length histogram before and after the filters, drops by rule, the toxicity
score distribution and dedup cluster sizes. Everything on the card comes from the report the
refresh seals (`manifest.extra["refresh"]`); the stages record the few distributions it
needs as fixed-bin histograms while they run (`length_histogram`, `score_histogram`,
`cluster_size_counts`), so building a card reads no documents. No Prefect imports: the flow
publishes the same markdown as an artifact with the images inlined (`flows.reporting`).
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.storage import ObjectStore, basename, join

# Document length in UTF-8 bytes: bin i holds lengths in [EDGES[i], EDGES[i+1]), the last is open.
LENGTH_EDGES = np.array([0] + [2**k for k in range(6, 21)], dtype=np.int64)  # <64 B … ≥1 MiB
SCORE_BINS = 20  # classifier scores in [0, 1], 0.05 wide
SCORE_KEY = "score_bin_"  # step counters `score_bin_00` … `score_bin_19`
CLUSTER_KEY = "clusters_upto_"  # dedup counts `clusters_upto_2`, `_4`, `_8`, …: clusters of (n/2, n] documents
CHARS_PER_TOKEN = 4.0  # as the refresh report's estimate
TOP_N = 25  # sources / languages / rules drawn; the rest are summed as "other"


def length_histogram(text: pa.Array | pa.ChunkedArray) -> list[int]:
    """Counts of documents per LENGTH_EDGES bin (vectorised, linear in the batch)."""
    lengths = pc.binary_length(text).to_numpy(zero_copy_only=False)
    bins = np.searchsorted(LENGTH_EDGES, lengths, side="right") - 1
    return np.bincount(bins, minlength=len(LENGTH_EDGES)).tolist()


def add_counts(total: list[int] | None, more: list[int] | None) -> list[int] | None:
    """Element-wise sum of two histograms; an empty or missing one counts as all zeros (a
    source whose documents were all dropped records no `after` histogram)."""
    if not more:
        return total
    if not total:
        return list(more)
    width = max(len(total), len(more))
    return [(total[i] if i < len(total) else 0) + (more[i] if i < len(more) else 0) for i in range(width)]


def score_histogram(scores: np.ndarray) -> dict[str, int]:
    """Classifier scores as step counters (`StepStats.counters`), summed across batches and units."""
    bins = np.clip((np.asarray(scores, dtype=np.float64) * SCORE_BINS).astype(np.int64), 0, SCORE_BINS - 1)
    return {f"{SCORE_KEY}{i:02d}": int(n) for i, n in enumerate(np.bincount(bins, minlength=SCORE_BINS)) if n}


def cluster_size_counts(sizes: np.ndarray) -> dict[str, int]:
    """Dedup clusters by size in powers of two, as plain numeric counts (stage totals sum them)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    sizes = sizes[sizes > 1]
    upper = 2 ** np.ceil(np.log2(sizes)).astype(np.int64)
    values, counts = np.unique(upper, return_counts=True)
    return {f"{CLUSTER_KEY}{v}": int(n) for v, n in zip(values, counts)}


def card_statistics(filter_results: list[dict]) -> dict:
    """What the card draws from the per-source results of a refresh: documents and text per
    source, and the length and score histograms summed over sources."""
    sources, before, after, scores = [], None, None, {}
    for r in filter_results:
        hist = r.get("length_hist") or {}
        sources.append({"source": basename(r["source"]), "read": r["reader"].get("documents", 0), "kept": r["documents_out"], "text_bytes": r.get("text_bytes_out", 0)})
        before, after = add_counts(before, hist.get("before")), add_counts(after, hist.get("after"))
        for step in r["steps"]:
            binned = {k: v for k, v in step.get("counters", {}).items() if k.startswith(SCORE_KEY)}
            if binned:
                scores.setdefault(step["name"], Counter()).update(binned)
    return {
        "sources": sorted(sources, key=lambda s: -s["kept"]),
        "length_edges": LENGTH_EDGES.tolist(),
        "length_before": before or [0] * len(LENGTH_EDGES),
        "length_after": after or [0] * len(LENGTH_EDGES),
        "scores": {name: [c.get(f"{SCORE_KEY}{i:02d}", 0) for i in range(SCORE_BINS)] for name, c in scores.items()},
    }


@dataclass
class Card:
    markdown: str  # images referenced as `card/<name>.png`
    images: dict[str, bytes] = field(default_factory=dict)  # `card/<name>.png` -> PNG bytes


def build_card(version_uri: str, report: dict) -> Card:
    """The card of a refresh version from its sealed report."""
    stats = report.get("card") or {}
    plots = {
        "sources": ("Documents and tokens per source (after filters)", _sources_plot, stats.get("sources")),
        "languages": ("Language mix (final version)", _bars_plot, (report.get("languages"), "documents")),
        "lengths": ("Document length before and after filters", _lengths_plot, stats),
        "drops": ("Documents dropped, by rule", _bars_plot, (report.get("dropped"), "documents")),
        "toxicity": ("Toxicity score distribution (all documents scored)", _scores_plot, (stats.get("scores") or {}).get("toxicity")),
        "clusters": ("Near-duplicate cluster sizes", _clusters_plot, _cluster_sizes(report.get("dedup") or {})),
    }
    card = Card(markdown="")
    sections = []
    for name, (title, draw, data) in plots.items():
        if not data or (isinstance(data, tuple) and not data[0]):
            sections.append(f"## {title}\n\nNothing to show: no data recorded.\n")
            continue
        path = f"card/{name}.png"
        card.images[path] = _png(draw, data, title)
        sections.append(f"## {title}\n\n![{title}]({path})\n")
    card.markdown = _summary(version_uri, report) + "\n" + "\n".join(sections)
    return card


def write_card(version_uri: str, card: Card, store: ObjectStore) -> str:
    """Images first, then `card.md` (its links resolve once it exists). Returns its URI."""
    for path, png in card.images.items():
        store.put_bytes(join(version_uri, path), png, content_type="image/png")
    uri = join(version_uri, "card.md")
    store.put_bytes(uri, card.markdown.encode(), content_type="text/markdown; charset=utf-8")
    return uri


def _summary(version_uri: str, r: dict) -> str:
    tokens = r.get("estimated_tokens") or int(r.get("text_bytes", 0) / CHARS_PER_TOKEN)
    return f"""# Dataset card: `{version_uri}`

| | |
|---|---|
| documents | **{r.get('documents', 0):,}** in {r.get('shards', 0)} shards ({r.get('bytes', 0) / 1e6:.1f} MB Parquet) |
| tokens (estimated, {CHARS_PER_TOKEN:g} bytes/token) | ≈ {tokens:,} |
| read → after filters → after dedup | {r.get('documents_read', 0):,} → {r.get('after_filters', 0):,} → {r.get('documents', 0):,} |
| sources | {r.get('sources', 0)} ({r.get('source_bytes', 0) / 1e6:.1f} MB) |
| quarantined | {sum((r.get('quarantined') or {}).values()):,} |
| removal requests applied | {', '.join(r.get('removal_requests') or []) or 'none'} |
"""


def _cluster_sizes(dedup: dict) -> dict[str, int]:
    """`clusters_upto_N` totals from whichever dedup stage recorded them."""
    found: Counter = Counter()
    for stage in dedup.values():
        if isinstance(stage, dict):
            found.update({k: v for k, v in stage.items() if k.startswith(CLUSTER_KEY) and isinstance(v, int)})
    return dict(sorted(found.items(), key=lambda kv: int(kv[0][len(CLUSTER_KEY):])))


def _top(items: dict[str, int], n: int = TOP_N) -> tuple[list[str], list[int]]:
    ranked = sorted(items.items(), key=lambda kv: -kv[1])
    head, rest = ranked[:n], ranked[n:]
    if rest:
        head.append((f"other ({len(rest)})", sum(v for _, v in rest)))
    return [k for k, _ in head], [v for _, v in head]


def _png(draw, data, title: str) -> bytes:
    from matplotlib.figure import Figure  # Agg canvas, no pyplot state: safe in any thread or worker

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    draw(fig, data)
    fig.suptitle(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})  # same report, same bytes
    return buf.getvalue()


def _bars_plot(fig, data) -> None:
    values, unit = data
    labels, counts = _top(values)
    ax = fig.subplots()
    ax.barh(labels[::-1], counts[::-1], color="#4c72b0")
    ax.set_xlabel(unit)


def _sources_plot(fig, sources: list[dict]) -> None:
    docs, tokens = fig.subplots(1, 2, sharey=True)
    head = sources[:TOP_N]
    labels = [s["source"] for s in head][::-1]
    docs.barh(labels, [s["kept"] for s in head][::-1], color="#4c72b0")
    docs.set_xlabel("documents kept")
    tokens.barh(labels, [s["text_bytes"] / CHARS_PER_TOKEN for s in head][::-1], color="#55a868")
    tokens.set_xlabel("tokens (estimated)")
    if len(sources) > TOP_N:
        docs.set_title(f"largest {TOP_N} of {len(sources)} sources", fontsize=9)


def _length_labels(edges: list[int]) -> list[str]:
    def size(n: int) -> str:
        return f"{n >> 20}M" if n >= 1 << 20 else f"{n >> 10}K" if n >= 1 << 10 else str(n)

    return [f"<{size(edges[1])}"] + [f"{size(a)}–{size(b)}" for a, b in zip(edges[1:-1], edges[2:])] + [f"≥{size(edges[-1])}"]


def _lengths_plot(fig, stats: dict) -> None:
    ax = fig.subplots()
    labels = _length_labels(stats["length_edges"])
    x = np.arange(len(labels))
    ax.bar(x - 0.2, stats["length_before"], width=0.4, label="read", color="#c44e52")
    ax.bar(x + 0.2, stats["length_after"], width=0.4, label="after filters", color="#4c72b0")
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("document length (UTF-8 bytes)")
    ax.set_ylabel("documents")
    ax.legend()


def _scores_plot(fig, counts: list[int]) -> None:
    ax = fig.subplots()
    width = 1 / len(counts)
    ax.bar(np.arange(len(counts)) * width, counts, width=width, align="edge", color="#8172b2")
    ax.set_xlabel("score (probability of the toxic label)")
    ax.set_ylabel("documents")
    ax.set_yscale("log")


def _clusters_plot(fig, sizes: dict[str, int]) -> None:
    ax = fig.subplots()
    uppers = [int(k[len(CLUSTER_KEY):]) for k in sizes]
    labels = ["2" if u == 2 else f"{u // 2 + 1}–{u}" for u in uppers]
    ax.bar(labels, list(sizes.values()), color="#55a868")
    ax.set_xlabel("documents per cluster")
    ax.set_ylabel("clusters")
    ax.set_yscale("log")
