# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""``report.html``: the markdown report as one self-contained page that opens offline.

The page holds what ``report.md`` holds (converted by a small converter for the markdown subset the report
writes: headings, tables, lists, images, inline code and bold), and every image is embedded as a data URI,
so the file can be mailed or archived alone. The mean-over-categories table sorts by any column on a click
on its header (a few lines of plain JavaScript, no CDN).
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path

SORTABLE_AFTER = "## Mean over categories"
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)")
_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)]+)\)")

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 1400px; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.85rem; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.45rem; text-align: right; }
th { background: #f2f2f2; }
td:first-child, th:first-child { text-align: left; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th[data-order="asc"]::after { content: " \\25B2"; }
table.sortable th[data-order="desc"]::after { content: " \\25BC"; }
img { max-width: 100%; height: auto; display: block; margin: 0.5rem 0; }
code { background: #f4f4f4; padding: 0 0.2rem; }
"""

SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (header, column) {
    header.addEventListener("click", function () {
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var order = header.getAttribute("data-order") === "asc" ? "desc" : "asc";
      table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("data-order"); });
      header.setAttribute("data-order", order);
      var key = function (row) {
        var text = row.cells[column].textContent.trim();
        var number = parseFloat(text);
        return isNaN(number) ? text.toLowerCase() : number;
      };
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (typeof x !== typeof y) { x = String(x); y = String(y); }
        var result = x < y ? -1 : x > y ? 1 : 0;
        return order === "asc" ? result : -result;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def _data_uri(path: Path) -> str:
    kind = "image/png" if path.suffix.lower() == ".png" else "image/svg+xml"
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _inline(text: str, folder: Path) -> str:
    """Escape, then render images (embedded), links, inline code and bold."""
    parts = []
    last = 0
    for match in _IMAGE.finditer(text):
        parts.append(html.escape(text[last : match.start()]))
        source = folder / match.group(2)
        uri = _data_uri(source) if source.is_file() else html.escape(match.group(2))
        parts.append(f'<img alt="{html.escape(match.group(1))}" src="{uri}">')
        last = match.end()
    parts.append(html.escape(text[last:]))
    out = "".join(parts)
    out = _LINK.sub(lambda m: f'<a href="{m.group(2)}">{m.group(1)}</a>', out)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def markdown_to_html(lines: Sequence[str], folder: Path) -> str:
    """The body HTML of the report's markdown (its own subset; see the module docstring)."""
    out: list[str] = []
    index = 0
    sortable_next = False
    in_list = False
    while index < len(lines):
        line = lines[index]
        if in_list and not line.startswith("- "):
            out.append("</ul>")
            in_list = False
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")), 6)
            out.append(f"<h{level}>{_inline(line[level:].strip(), folder)}</h{level}>")
            sortable_next = line.startswith(SORTABLE_AFTER)
        elif (
            line.startswith("|")
            and index + 1 < len(lines)
            and set(lines[index + 1].replace("|", "").strip()) <= set("-: ")
        ):
            header = _cells(line)
            index += 2
            body = []
            while index < len(lines) and lines[index].startswith("|"):
                body.append(_cells(lines[index]))
                index += 1
            css = ' class="sortable" id="mean-table"' if sortable_next else ""
            sortable_next = False
            out.append(f"<table{css}><thead><tr>")
            out += [f"<th>{_inline(cell, folder)}</th>" for cell in header]
            out.append("</tr></thead><tbody>")
            for row in body:
                out.append("<tr>" + "".join(f"<td>{_inline(cell, folder)}</td>" for cell in row) + "</tr>")
            out.append("</tbody></table>")
            continue
        elif line.startswith("- "):
            if not in_list:
                out.append("<ul>")
                in_list = True
            out.append(f"<li>{_inline(line[2:], folder)}</li>")
        elif line.strip():
            out.append(f"<p>{_inline(line, folder)}</p>")
        index += 1
    if in_list:
        out.append("</ul>")
    return "\n".join(out)


def write_html(lines: Sequence[str], folder: Path, title: str, stamp: str = "") -> Path:
    """Write ``report.html`` next to ``report.md`` from the same markdown lines (``stamp``: a comment at its top)."""
    body = markdown_to_html(lines, folder)
    comment = f"<!-- {html.escape(stamp)} -->\n" if stamp else ""
    page = (
        f'<!DOCTYPE html>\n{comment}<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n"
        f"<script>{SCRIPT}</script>\n</body></html>\n"
    )
    path = folder / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
