"""A report table: a title, a header and rows of strings, with the numbers behind it for CSV."""

from __future__ import annotations

import csv
import html
import io
import re
from dataclasses import dataclass
from typing import Any

from medrobust.stats import Summary

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def markdown_text(text: str) -> str:
    """``text`` from a dataset or a config, safe in Markdown: HTML characters escaped (a viewer
    that renders HTML shows them and runs nothing) and control characters removed."""
    return html.escape(_CONTROL.sub("", text), quote=False)


def markdown_cell(text: str) -> str:
    """:func:`markdown_text` for a table cell: pipes escaped, line breaks as spaces."""
    return markdown_text(text).replace("|", "\\|").replace("\n", " ")


def csv_value(value: Any) -> Any:
    """A string that a spreadsheet would read as a formula (``=``, ``+``, ``-``, ``@``) gets a
    leading apostrophe (OWASP's advice against CSV injection); numbers stay as they are."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


@dataclass(frozen=True)
class Table:
    """A titled table of strings, with the numbers behind it for CSV."""

    title: str
    header: tuple[str, ...]
    rows: list[tuple[str, ...]]
    records: list[dict[str, Any]]

    def markdown(self) -> str:
        """GitHub-flavoured Markdown."""
        lines = [f"### {markdown_text(self.title)}", ""]
        lines.append("| " + " | ".join(map(markdown_cell, self.header)) + " |")
        lines.append("|" + "---|" * len(self.header))
        lines += ["| " + " | ".join(map(markdown_cell, row)) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        """CSV of the underlying numbers (one column per statistic)."""
        if not self.records:
            return ""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(self.records[0]))
        writer.writeheader()
        writer.writerows({k: csv_value(v) for k, v in record.items()} for record in self.records)
        return buffer.getvalue()


def summary_fields(prefix: str, s: Summary) -> dict[str, Any]:
    return {
        f"{prefix}_mean": s.mean,
        f"{prefix}_sd": s.sd,
        f"{prefix}_ci_low": s.ci_low,
        f"{prefix}_ci_high": s.ci_high,
    }
