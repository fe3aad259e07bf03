"""Word-list and URL-blocklist filtering: drop documents that contain a listed word
(`word`, whole words, case-insensitive) or come from a listed domain or any subdomain of
one (`domain`)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.steps.base import Step
from pipeline.steps.text import as_bool, first_reason, text_column

HOST = r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(?P<host>[^:/?#]+)"


def read_list(path: str | Path) -> list[str]:
    """One entry a line; blank lines and lines starting with # are ignored."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]


class Blocklist(Step):
    name = "blocklist"

    def __init__(self, words: list[str] | None = None, words_file: str | None = None,
                 domains: list[str] | None = None, domains_file: str | None = None):
        super().__init__()
        words = list(words or []) + (read_list(words_file) if words_file else [])
        domains = list(domains or []) + (read_list(domains_file) if domains_file else [])
        self.domains = {d.lower().strip(".") for d in domains}
        # one RE2 alternation over the whole batch; \b is ASCII-only in RE2, so word edges
        # are spelled out to work for non-ASCII words too
        self.word_pattern = (
            r"(?i)(?:^|[^\pL\pN_])(?:" + "|".join(re.escape(w) for w in sorted(set(words))) + r")(?:$|[^\pL\pN_])"
            if words else None
        )

    def annotate(self, table):
        n = table.num_rows
        rules = []
        if self.word_pattern:
            rules.append(("word", as_bool(pc.match_substring_regex(text_column(table), self.word_pattern))))
        if self.domains and "url" in table.column_names:
            hosts = pc.utf8_lower(pc.struct_field(pc.extract_regex(table.column("url").combine_chunks(), HOST), "host"))
            unique = pc.unique(hosts).to_pylist()
            blocked = [h for h in unique if h and self._blocked(h)]
            rules.append(("domain", as_bool(pc.is_in(hosts, value_set=pa.array(blocked, hosts.type)))))
        return table, first_reason(n, rules) if rules else None

    def _blocked(self, host: str) -> bool:
        parts = host.strip(".").split(".")
        return any(".".join(parts[i:]) in self.domains for i in range(len(parts)))
