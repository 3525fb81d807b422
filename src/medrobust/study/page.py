"""The report as a document: sections of paragraphs, lists, tables and figures, rendered as
Markdown (figures as PNG files beside it) and as one self-contained HTML page (figures embedded,
no script, no network), through a Jinja2 template that escapes every string.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import jinja2

from medrobust.study.figures import FigureImage
from medrobust.study.table import Table, markdown_text


@dataclass(frozen=True)
class Paragraph:
    """A paragraph of plain text."""

    text: str


@dataclass(frozen=True)
class Heading:
    """A sub-heading within a section."""

    text: str


@dataclass(frozen=True)
class Preformatted:
    """Text shown as is, in a monospaced block (a configuration, a log)."""

    text: str


@dataclass(frozen=True)
class Bullets:
    """A list of plain-text items."""

    items: tuple[str, ...]


@dataclass(frozen=True)
class Change:
    """A stretch of an attacked text: kept, removed, inserted or elided (``…``)."""

    kind: str  # "same", "removed", "inserted" or "gap"
    text: str


@dataclass(frozen=True)
class AttackedText:
    """One attacked clinical text with its verdict and its marked changes."""

    heading: str
    verdict: str
    changes: tuple[Change, ...]


Block = Paragraph | Heading | Preformatted | Bullets | Table | FigureImage | AttackedText


@dataclass(frozen=True)
class Section:
    """A titled section of the report."""

    title: str
    blocks: Sequence[Block] = field(default_factory=tuple)

    @property
    def anchor(self) -> str:
        """An id for links within the page."""
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


@dataclass(frozen=True)
class Document:
    """The whole report."""

    title: str
    preamble: Sequence[Block]
    sections: Sequence[Section]

    def figures(self) -> list[FigureImage]:
        """Every figure, in document order."""
        return [
            block
            for section in self.sections
            for block in section.blocks
            if isinstance(block, FigureImage)
        ]


FIGURES_FOLDER = "figures"


def _markdown_change(change: Change) -> str:
    text = markdown_text(change.text)
    if change.kind == "removed":
        return f"~~{text}~~"
    if change.kind == "inserted":
        return f"**{text}**"
    return text


def _fenced(text: str) -> str:
    """``text`` in a code fence longer than any run of backticks inside it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}\n"


def _markdown_block(block: Block) -> str:
    """One block as Markdown. Every string may come from a dataset or a config (clinical text,
    labels, the intended use), so each is escaped: no HTML of its own reaches a viewer."""
    if isinstance(block, Paragraph):
        return markdown_text(block.text) + "\n"
    if isinstance(block, Heading):
        return f"### {markdown_text(block.text)}\n"
    if isinstance(block, Preformatted):
        return _fenced(block.text)
    if isinstance(block, Bullets):
        return "\n".join(f"- {markdown_text(item)}" for item in block.items) + "\n"
    if isinstance(block, Table):
        return block.markdown()
    if isinstance(block, FigureImage):
        title = markdown_text(block.title)
        return (
            f"![{title}]({FIGURES_FOLDER}/{block.name}.png)\n\n"
            f"*{title}.* {markdown_text(block.caption)}\n"
        )
    words = " ".join(_markdown_change(change) for change in block.changes)
    return f"- {markdown_text(block.heading)} ({markdown_text(block.verdict)}): {words}\n"


def render_markdown(document: Document) -> str:
    """GitHub-flavoured Markdown; figures link to ``figures/<name>.png``."""
    parts = [f"# {markdown_text(document.title)}\n"]
    parts += [_markdown_block(b) for b in document.preamble]
    for section in document.sections:
        if section.blocks:
            parts.append(f"## {markdown_text(section.title)}\n")
            parts += [_markdown_block(block) for block in section.blocks]
    return "\n".join(parts)


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("medrobust.study", "templates"),
        autoescape=True,  # every string from a config, a dataset or a model is escaped
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.globals["kind"] = _kind
    environment.filters["data_uri"] = _data_uri
    return environment


def _kind(block: Block) -> str:
    return type(block).__name__


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_html(document: Document) -> str:
    """One self-contained HTML page: styles inline, figures as data URIs, no script."""
    return _environment().get_template("report.html.j2").render(document=document)
