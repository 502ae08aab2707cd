"""The doctor's report for a person: `report.html` with thumbnails of every group, beside
`report.json` (what `imgcls doctor --json` prints)."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

from imgcls.doctor.checks import Report
from imgcls.files import make_dir, write_json, write_text
from imgcls.reports.gallery import Thumbnails

__all__ = ["write_html_report"]

THUMBNAIL_SIDE = 128  # pixels, the longer side of a report.html thumbnail


def write_html_report(report: Report, out: str | os.PathLike, max_groups: int = 200) -> Path:
    """`out/report.html` (with thumbnails in `out/thumbs/`) and `out/report.json`."""
    out = make_dir(out)
    write_json(out / "report.json", report.to_dict())
    root = Path(report.root)
    thumbnails = Thumbnails(THUMBNAIL_SIDE, out / "thumbs")

    def figure(rel: str) -> str:
        return thumbnails.figure(root / rel, html.escape(rel))

    def groups_html(title: str, groups: list[dict[str, Any]]) -> str:
        if not groups:
            return f"<h2>{title}: none</h2>"
        parts = [f"<h2>{title} ({len(groups)})</h2>"]
        for g in groups[:max_groups]:
            note = " — <b>label conflict</b>" if g["cross_class"] else ""
            extra = f", distance {g['max_distance']}" if "max_distance" in g else ""
            parts.append(
                f"<p>splits {html.escape(', '.join(g['splits']))}; classes "
                f"{html.escape(', '.join(g['classes']))}{extra}{note}</p>"
                f'<div class="row">{"".join(figure(p) for p in g["paths"])}</div>'
            )
        if len(groups) > max_groups:
            parts.append(f"<p>… and {len(groups) - max_groups} more in report.json</p>")
        return "\n".join(parts)

    counts = "".join(
        f"<tr><td>{html.escape(split)}</td><td>{html.escape(label)}</td><td>{n}</td></tr>"
        for split, by_class in report.classes.items()
        for label, n in by_class.items()
    )
    corrupt = "".join(
        f"<li>{html.escape(c['path'])}: {html.escape(c['reason'])}</li>" for c in report.corrupt
    )
    warnings = "".join(
        f"<li>{html.escape(w['message'])}<br><small>{html.escape(', '.join(w['paths'][:20]))}"
        f"{' …' if len(w['paths']) > 20 else ''}</small></li>"
        for w in report.warnings
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>imgcls doctor: {html.escape(report.root)}</title>
<style>body{{font-family:sans-serif;margin:2em}} .row{{display:flex;flex-wrap:wrap;gap:8px}}
figure{{margin:0;width:140px;font-size:11px;word-break:break-all}}
img{{max-width:{THUMBNAIL_SIDE}px}} td{{padding:0 1em}}</style></head><body>
<h1>imgcls doctor: {html.escape(report.root)}</h1>
<p>{report.num_files} image files, {report.num_images} decodable, layout {report.layout},
{report.images_per_s:.0f} images/s.</p>
<h2>Classes</h2><table><tr><th>split</th><th>class</th><th>images</th></tr>{counts}</table>
<h2>Corrupt ({len(report.corrupt)})</h2><ul>{corrupt}</ul>
<h2>Warnings ({len(report.warnings)})</h2><ul>{warnings}</ul>
{groups_html("Leaks", report.leaks)}
{groups_html("Duplicates", report.duplicates)}
{groups_html("Near-duplicates", report.near_duplicates)}
</body></html>
"""
    page_path = out / "report.html"
    write_text(page_path, page)
    return page_path
