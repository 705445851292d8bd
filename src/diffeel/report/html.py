"""A self-contained HTML report: inline SVG figures and tables, no external requests."""

from __future__ import annotations

import html
import math

from .tables import percent


def table_html(header: list[str], rows: list[list], best: dict[int, str] | None = None) -> str:
    """An HTML table; ``best`` marks the best value per column index ("max" or "min") in bold."""
    best = best or {}
    winners = {}
    for column, direction in best.items():
        values = [row[column] for row in rows if isinstance(row[column], float) and not math.isnan(row[column])]
        if values:
            winners[column] = max(values) if direction == "max" else min(values)
    lines = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        cells = []
        for column, value in enumerate(row):
            text = percent(value) if isinstance(value, float) or value is None else html.escape(str(value))
            bold = column in winners and value == winners[column]
            cells.append(f"<td>{'<b>' + text + '</b>' if bold else text}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(lines + ["</table>"])


def page(title: str, sections: list[tuple[str, str]]) -> str:
    body = "\n".join(f"<section><h2>{html.escape(heading)}</h2>\n{content}\n</section>" for heading, content in sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
svg {{ max-width: 100%; height: auto; }}
.note {{ color: #555; font-size: 0.9em; }}
</style></head>
<body><h1>{html.escape(title)}</h1>
{body}
</body></html>
"""
