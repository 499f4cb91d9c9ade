"""The HTML page around a report's sections: inline CSS and plain JS, nothing fetched.

The JS does two things: sort a table by the clicked column (numbers by the cell's `data-v`,
NaN always last) and swap a plane's pictures when its slice slider moves (the slices of each
plane are embedded as data: URIs in a JSON script block).
"""

from __future__ import annotations

import html

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
       color: #1a1a1a; background: #fafafa; }
header { background: #1f2933; color: #fff; padding: 14px 24px; }
header h1 { margin: 0; font-size: 20px; }
header p { margin: 4px 0 0; color: #cbd2d9; font-size: 12px; }
main { padding: 8px 24px 40px; max-width: 1500px; }
h2 { border-bottom: 2px solid #d9e2ec; padding-bottom: 4px; margin-top: 28px; }
h3 { margin: 18px 0 6px; }
.boxes { display: flex; flex-wrap: wrap; gap: 12px; }
.box { background: #fff; border: 1px solid #d9e2ec; border-radius: 6px; padding: 8px 12px; }
.box h3 { margin: 0 0 4px; font-size: 14px; }
table { border-collapse: collapse; background: #fff; }
td, th { border: 1px solid #d9e2ec; padding: 3px 8px; text-align: right; }
th { text-align: center; }
td:first-child, th:first-child, td.text { text-align: left; }
.kv td { border: none; padding: 1px 8px 1px 0; text-align: left; vertical-align: top; }
.kv td:first-child { color: #52606d; white-space: nowrap; }
table.sortable th { cursor: pointer; user-select: none; background: #f0f4f8; }
table.sortable th[aria-sort=ascending]::after { content: " \\25B2"; }
table.sortable th[aria-sort=descending]::after { content: " \\25BC"; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 18px; align-items: center;
          background: #fff; border: 1px solid #d9e2ec; border-radius: 6px; padding: 8px 12px; }
.swatch { display: inline-block; width: 14px; height: 14px; border: 1px solid #333;
          vertical-align: -2px; margin-right: 4px; }
.bar { display: inline-block; width: 120px; height: 12px; border: 1px solid #333;
       vertical-align: -2px; margin: 0 4px; }
.panels { display: flex; flex-wrap: wrap; gap: 8px; align-items: flex-start; }
figure { margin: 0; text-align: center; }
figcaption { font-size: 12px; color: #52606d; }
img.pic { image-rendering: pixelated; display: block; background-size: 100% 100%; }
.plane { background: #fff; border: 1px solid #d9e2ec; border-radius: 6px; padding: 6px 8px;
         margin: 6px 0; }
.plane label { display: flex; gap: 10px; align-items: center; font-size: 12px; }
.plane input[type=range] { width: 320px; }
.scores { font-weight: normal; font-size: 13px; color: #52606d; }
.steps { display: flex; flex-wrap: wrap; gap: 8px; }
.step { background: #fff; border: 1px solid #d9e2ec; border-radius: 6px; padding: 4px;
        text-align: center; font-size: 12px; }
.step img { margin: 2px auto; }
.note { color: #52606d; font-size: 13px; }
"""

JS = """
(function () {
  "use strict";
  function compare(a, b, ascending) {
    var p = a.dataset.v, q = b.dataset.v, order;
    if (p !== undefined && q !== undefined) {
      p = parseFloat(p); q = parseFloat(q);
      if (isNaN(p) || isNaN(q)) { return Number(isNaN(p)) - Number(isNaN(q)); }
      order = p - q;
    } else {
      order = a.textContent.localeCompare(b.textContent, undefined, {numeric: true});
    }
    return ascending ? order : -order;
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var headers = table.querySelectorAll("thead th");
    headers.forEach(function (th, column) {
      th.addEventListener("click", function () {
        var ascending = th.getAttribute("aria-sort") !== "ascending";
        headers.forEach(function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        var body = table.tBodies[0];
        Array.prototype.slice.call(body.rows).sort(function (r, s) {
          return compare(r.cells[column], s.cells[column], ascending);
        }).forEach(function (row) { body.appendChild(row); });
      });
    });
  });
  document.querySelectorAll("input.slice").forEach(function (slider) {
    var data = JSON.parse(document.getElementById(slider.dataset.src).textContent);
    var plane = slider.closest(".plane");
    var label = plane.querySelector(".slice-label");
    slider.addEventListener("input", function () {
      var k = Number(slider.value);
      plane.querySelectorAll("img[data-panel]").forEach(function (img) {
        img.src = data.panels[img.dataset.panel][k];
        if (img.dataset.layer) {
          img.style.backgroundImage = "url('" + data.panels.image[k] + "')";
        }
      });
      label.textContent = "slice " + (data.slices[k] + 1) + " of " + data.size;
    });
  });
}());
"""


def page(title: str, subtitle: str, body: str) -> str:
    """The whole document: one file, opens from disk, no network."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<link rel=\"icon\" href=\"data:,\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p></header>\n"
        f"<main>\n{body}\n</main>\n<script>{JS}</script>\n</body>\n</html>\n"
    )
