"""A report table: a title, a header and rows of strings, with the numbers behind it for CSV."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any

from medrobust.stats import Summary


@dataclass(frozen=True)
class Table:
    """A titled table of strings, with the numbers behind it for CSV."""

    title: str
    header: tuple[str, ...]
    rows: list[tuple[str, ...]]
    records: list[dict[str, Any]]

    def markdown(self) -> str:
        """GitHub-flavoured Markdown."""
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |"]
        lines.append("|" + "---|" * len(self.header))
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        """CSV of the underlying numbers (one column per statistic)."""
        if not self.records:
            return ""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(self.records[0]))
        writer.writeheader()
        writer.writerows(self.records)
        return buffer.getvalue()


def summary_fields(prefix: str, s: Summary) -> dict[str, Any]:
    return {
        f"{prefix}_mean": s.mean,
        f"{prefix}_sd": s.sd,
        f"{prefix}_ci_low": s.ci_low,
        f"{prefix}_ci_high": s.ci_high,
    }
