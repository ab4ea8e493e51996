"""The inline stylesheet of report.html (no external font, image or sheet)."""

CSS = """
:root { --fg: #1d2330; --muted: #5b6475; --line: #d9dde5; --pass: #1e7b34;
  --fail: #b3261e; --unsure: #a35d00; --bg: #ffffff; --panel: #f6f7f9; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 24px; margin: 0 0 8px; }
h2 { font-size: 19px; margin: 30px 0 10px; padding-bottom: 4px;
  border-bottom: 2px solid var(--line); }
h3 { font-size: 15px; margin: 14px 0 6px; }
header { display: grid; grid-template-columns: 1fr auto; gap: 4px 24px; align-items: start; }
header h1 { grid-column: 1; }
.badge { grid-column: 2; grid-row: 1 / span 2; margin: 0; padding: 10px 18px;
  border-radius: 8px; font-size: 18px; color: #fff; background: var(--muted); }
.badge.pass { background: var(--pass); }
.badge.fail { background: var(--fail); }
.badge.inconclusive { background: var(--unsure); }
.facts { grid-column: 1; display: grid; grid-template-columns: max-content 1fr;
  gap: 2px 14px; margin: 0; }
.facts dt { color: var(--muted); }
.facts dd { margin: 0; overflow-wrap: anywhere; }
nav ul { list-style: none; display: flex; flex-wrap: wrap; gap: 4px 18px; padding: 8px 0;
  margin: 14px 0 0; border-top: 1px solid var(--line); border-bottom: 1px solid var(--line); }
nav a { color: #1f5fa8; text-decoration: none; }
nav a:hover { text-decoration: underline; }
.missing-list { margin: 18px 0; padding: 8px 16px; background: #fff8e6;
  border-left: 4px solid var(--unsure); }
.missing-list h2 { font-size: 15px; margin: 4px 0; border: 0; }
.missing-list ul { margin: 4px 0; padding-left: 20px; }
p.missing { padding: 10px 14px; background: var(--panel); border-left: 4px solid #999;
  color: var(--muted); }
p.error { color: var(--fail); font-weight: 600; }
table { border-collapse: collapse; width: 100%; margin: 8px 0 16px; }
caption { text-align: left; color: var(--muted); padding: 4px 0; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 8px; text-align: left;
  vertical-align: top; }
th { background: var(--panel); font-weight: 600; }
table.numbers td:not(:first-child), table.numbers th:not(:first-child) { text-align: right;
  font-variant-numeric: tabular-nums; }
table.gates td:nth-child(2), table.gates td:nth-child(5) { white-space: nowrap; }
table.gates td:nth-child(3), table.gates td:nth-child(4), table.gates td:nth-child(6) {
  text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.status { display: inline-block; min-width: 7em; text-align: center; padding: 1px 6px;
  border-radius: 4px; color: #fff; font-weight: 600; font-size: 12px; }
.status.pass { background: var(--pass); }
.status.fail { background: var(--fail); }
.status.inconclusive { background: var(--unsure); }
.stages .child { padding-left: 22px; }
.stages .parent { font-weight: 600; }
code.marker { padding: 1px 5px; border-radius: 4px; background: var(--panel); }
code.marker.sv { color: var(--pass); }
code.marker.nsv { color: #1f5fa8; }
code.marker.zablokirovano, code.marker.avariya { color: var(--fail); }
code.marker.otkat { color: var(--unsure); }
figure.chart-figure { margin: 14px 0 22px; padding: 10px 12px 6px; background: var(--panel);
  border-radius: 8px; }
figcaption { font-weight: 600; margin-bottom: 4px; }
svg.chart { width: 100%; height: auto; display: block; background: #fff; border-radius: 4px; }
svg.chart .grid line { stroke: #e6e8ee; stroke-width: 1; }
svg.chart .grid .frame { fill: none; stroke: #9aa1ad; }
svg.chart text { font: 12px system-ui, "DejaVu Sans", sans-serif; fill: #3a4150; }
svg.chart text.axis-label { font-size: 13px; font-weight: 600; }
svg.chart text.band-label { font-size: 11px; font-weight: 600; }
svg.chart text.row-label { font-size: 12px; }
ul.legend { list-style: none; display: flex; flex-wrap: wrap; gap: 4px 18px; padding: 0;
  margin: 6px 0 0; }
ul.legend li { display: flex; align-items: center; gap: 6px; }
.swatch { display: inline-block; width: 26px; height: 10px; opacity: 0.35;
  border-radius: 2px; }
.swatch.solid { opacity: 1; width: 14px; }
svg.chart text.span-label { font-size: 11px; fill: #fff; font-weight: 600; }
p.note { color: var(--pass); margin: 6px 0; }
"""
