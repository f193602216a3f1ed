"""MkDocs hooks of the wnjax site (``hooks:`` in ``mkdocs.yml``); nothing here touches the network.

- **Lists without a blank line before them.** The docstrings follow equinox's style,
  ``**Arguments:**`` directly followed by ``- `name`: meaning`` lines. Python-Markdown only starts
  a list after a blank line, so a small preprocessor inserts one. It is added to the Markdown
  extensions before mkdocstrings reads them, so it applies to the pages and to the docstrings.
- **Math without JavaScript.** ``$...$`` (inline) and ``$$...$$`` (display, a paragraph of its
  own) are converted to MathML at build time by ``latex2mathml``, which browsers render natively:
  no MathJax or KaTeX is loaded, from the web or otherwise. Code spans are left alone.
- **The scorecard.** ``wnjax reproduce --all`` writes ``runs/scorecard/index.md``. When that
  file exists, its text replaces the placeholder of ``docs/scorecard.md`` and the files beside it
  (figures) are published under ``scorecard/``; links to anything else become plain text, so a
  strict build never depends on what a run left behind.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import latex2mathml.converter
from markdown import Extension
from markdown.inlinepatterns import InlineProcessor
from markdown.preprocessors import Preprocessor
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
# WNJAX_SCORECARD_DIR points at another run's scorecard folder.
SCORECARD_DIR = Path(os.environ.get("WNJAX_SCORECARD_DIR", ROOT / "runs" / "scorecard"))
SCORECARD_PAGE = "scorecard.md"
PLACEHOLDER = re.compile(r"<!-- scorecard:start -->.*?<!-- scorecard:end -->", re.DOTALL)

_ITEM = re.compile(r"^ {0,3}(?:[-*+]|\d+[.)]) +\S")
_FENCE = re.compile(r"^\s*(```|~~~)")


class _BreaklessLists(Preprocessor):
    """Insert a blank line before a list that directly follows a paragraph line."""

    def run(self, lines: list[str]) -> list[str]:
        out: list[str] = []
        fence = None  # the marker of the open code fence, if any
        in_list = False
        for line in lines:
            match = _FENCE.match(line)
            if fence is not None:
                if match and match.group(1) == fence:
                    fence = None
                out.append(line)
                continue
            if match:
                fence = match.group(1)
                in_list = False
                out.append(line)
                continue
            if not line.strip():
                in_list = False
            elif _ITEM.match(line):
                if not in_list and out and out[-1].strip() and not out[-1].lstrip().startswith("|"):
                    out.append("")
                in_list = True
            out.append(line)
        return out


DISPLAY_MATH = r"(?<!\\)\$\$(.+?)\$\$"
INLINE_MATH = r"(?<![\\$])\$(?![\s$])([^$\n]+?)(?<![\s\\])\$(?![\w$])"


class _Math(InlineProcessor):
    """``$...$`` or ``$$...$$`` -> MathML, stored as raw HTML."""

    def __init__(self, pattern: str, md, display: str):
        super().__init__(pattern, md)
        self.display = display

    def handleMatch(self, m, data):
        mathml = latex2mathml.converter.convert(m.group(1).strip(), display=self.display)
        return self.md.htmlStash.store(mathml), m.start(0), m.end(0)


class WnjaxMarkdown(Extension):
    def extendMarkdown(self, md):
        md.preprocessors.register(_BreaklessLists(md), "wnjax_breakless_lists", 35)
        # After code spans (190), so ``$`` inside backticks stays literal; before emphasis.
        md.inlinePatterns.register(_Math(DISPLAY_MATH, md, "block"), "wnjax_display_math", 186)
        md.inlinePatterns.register(_Math(INLINE_MATH, md, "inline"), "wnjax_inline_math", 185)


@event_priority(100)  # before mkdocstrings reads the Markdown extensions
def on_config(config):
    config.markdown_extensions.append(WnjaxMarkdown())
    return config


def _scorecard_assets() -> list[Path]:
    if not (SCORECARD_DIR / "index.md").is_file():
        return []
    return sorted(
        p
        for p in SCORECARD_DIR.rglob("*")
        if p.is_file() and p.suffix.lower() not in {".md", ".html", ".json"}
    )


def on_files(files, config):
    for path in _scorecard_assets():
        rel = path.relative_to(SCORECARD_DIR).as_posix()
        files.append(File.generated(config, f"scorecard/{rel}", abs_src_path=str(path)))
    return files


_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)(\s+\"[^\"]*\")?\)")


def _relink(text: str, assets: set[str]) -> str:
    """Point relative links at the published copies; drop the ones that have none."""

    def repl(m: re.Match) -> str:
        bang, label, target, title = m.group(1), m.group(2), m.group(3), m.group(4) or ""
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#", target):  # a URL or an anchor on this page
            return m.group(0)
        path = target.split("#")[0]
        if path in assets:
            return f"{bang}[{label}](scorecard/{target}{title})"
        return label

    return _LINK.sub(repl, text)


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != SCORECARD_PAGE:
        return markdown
    index = SCORECARD_DIR / "index.md"
    if not index.is_file():
        return markdown
    assets = {p.relative_to(SCORECARD_DIR).as_posix() for p in _scorecard_assets()}
    body = _relink(index.read_text(encoding="utf-8"), assets)
    # The run's own title gives way to the page's.
    body = re.sub(r"\A\s*# [^\n]*\n", "", body)
    return PLACEHOLDER.sub(lambda _: body, markdown)
