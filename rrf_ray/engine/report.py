"""Report helpers every experiment's report uses: figures and tables written atomically, and
report.html, a self-contained page of a report.md (its images inlined) to open or copy anywhere."""

from __future__ import annotations

import base64
import html
import io
import mimetypes
from pathlib import Path
from urllib.parse import unquote, urlsplit

from rrf_ray.engine.atomic import write_atomic


def save_figure_atomic(fig, path, dpi: int = 110) -> Path:
    """A matplotlib figure as a PNG at `path`, never half-written."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return write_atomic(path, buf.getvalue())


# Plain, small and print-friendly; no JavaScript anywhere in the page.
HTML_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; line-height: 1.5;
       color: #1f2328; background: #fff; margin: 0; }
main { max-width: 1100px; margin: 0 auto; padding: 1.5rem 2rem 3rem; }
h1, h2, h3 { line-height: 1.25; margin-top: 1.6em; }
h1 { border-bottom: 1px solid #d0d7de; padding-bottom: .3em; }
img { max-width: 100%; height: auto; display: block; margin: .5rem 0; }
table { border-collapse: collapse; margin: 1rem 0; display: block; overflow-x: auto; max-width: 100%;
        font-size: .92rem; }
th, td { border: 1px solid #d0d7de; padding: .3rem .6rem; text-align: left; vertical-align: top; }
thead th { background: #f6f8fa; }
tbody tr:nth-child(even) { background: #fafbfc; }
code { background: #f6f8fa; padding: .1em .3em; border-radius: 4px; font-size: .9em; }
pre { background: #f6f8fa; padding: .8rem; overflow-x: auto; }
pre code { padding: 0; }
.missing-image { display: inline-block; color: #9a1c1c; background: #fdecec; border: 1px dashed #c53030;
                 padding: .2rem .5rem; margin: .3rem 0; }
""".strip()


def _data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _inline_images(root, base: Path) -> list[str]:
    """Every <img> under `root` (an ElementTree of the converted Markdown) gets its local file as a
    data: URI; one that cannot be read (missing, or not a local file) becomes a visible note.
    Returns the sources that were not embedded."""
    import xml.etree.ElementTree as etree

    missing = []
    for parent in list(root.iter()):
        for i, child in enumerate(list(parent)):
            if child.tag != "img":
                continue
            src = child.get("src", "")
            if src.startswith("data:"):
                continue
            parts = urlsplit(src)
            problem = None
            if parts.scheme or parts.netloc or not parts.path:
                problem = "not a local file, not embedded"
            else:
                path = base / unquote(parts.path)
                try:
                    child.set("src", _data_uri(path))
                except OSError as e:  # missing, a directory, unreadable
                    problem = "missing" if not path.exists() else f"unreadable ({type(e).__name__})"
            if problem is None:
                continue
            missing.append(src)
            note = etree.Element("span", {"class": "missing-image", "role": "note"})
            alt = child.get("alt")
            note.text = f"[image {problem}: {src}" + (f" ({alt})" if alt else "") + "]"
            note.tail = child.tail
            parent[i] = note
    return missing


def markdown_to_html(text: str, base_dir, title: str | None = None) -> str:
    """A Markdown report as one self-contained HTML page (see write_html_report); images are looked up
    relative to `base_dir`."""
    import markdown
    from markdown.extensions import Extension
    from markdown.treeprocessors import Treeprocessor

    found: dict = {}

    class _Inline(Treeprocessor):
        def run(self, root):
            found["missing"] = _inline_images(root, Path(base_dir))
            for el in root.iter():
                if el.tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
                    found["title"] = "".join(el.itertext()).strip()
                    break

    class _InlineImages(Extension):
        def extendMarkdown(self, md):
            md.treeprocessors.register(_Inline(md), "rrf_inline_images", -1)  # last: after unescape

    md = markdown.Markdown(extensions=["tables", "fenced_code", _InlineImages()], output_format="html")
    # Raw HTML in a report (a traceback's "<class 'X'>", anything from an error message) is shown as text.
    md.preprocessors.deregister("html_block")
    md.inlinePatterns.deregister("html")
    body = md.convert(text)
    page_title = title or found.get("title") or "report"
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(page_title)}</title>\n<style>\n{HTML_CSS}\n</style>\n</head>\n"
            f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n")


def write_html_report(md_path, html_path=None) -> Path:
    """report.html beside `md_path` (or at `html_path`): the Markdown rendered with Python-Markdown
    (tables), every local image it references inlined as a data: URI so the one file works copied
    anywhere, a small embedded stylesheet, no JavaScript, the title from the first heading. A missing
    image is a visible note in the page; links to other files (results.csv) stay relative. Written
    atomically; returns its path."""
    md_path = Path(md_path)
    html_path = Path(html_path) if html_path is not None else md_path.with_suffix(".html")
    page = markdown_to_html(md_path.read_text(encoding="utf-8"), md_path.parent)
    return write_atomic(html_path, page)
