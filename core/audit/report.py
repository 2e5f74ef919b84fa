"""report.json (machine-readable) and report.html (self-contained, inline SVG plots)."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

W, H, PAD = 420, 300, 40


def _axes(xmin: float, xmax: float, ymin: float, ymax: float, xlabel: str, ylabel: str):
    xs = (xmax - xmin) or 1.0
    ys = (ymax - ymin) or 1.0

    def px(x: float) -> float:
        return PAD + (x - xmin) / xs * (W - 2 * PAD)

    def py(y: float) -> float:
        return H - PAD - (y - ymin) / ys * (H - 2 * PAD)

    parts = [f'<rect x="{PAD}" y="{PAD}" width="{W - 2 * PAD}" height="{H - 2 * PAD}" fill="none" stroke="#888"/>',
             f'<text x="{W / 2}" y="{H - 8}" text-anchor="middle" font-size="12">{html.escape(xlabel)}</text>',
             f'<text x="12" y="{H / 2}" font-size="12" transform="rotate(-90 12 {H / 2})" text-anchor="middle">{html.escape(ylabel)}</text>',
             f'<text x="{PAD}" y="{H - PAD + 14}" font-size="10">{xmin:.3g}</text>',
             f'<text x="{W - PAD}" y="{H - PAD + 14}" font-size="10" text-anchor="end">{xmax:.3g}</text>',
             f'<text x="{PAD - 4}" y="{H - PAD}" font-size="10" text-anchor="end">{ymin:.3g}</text>',
             f'<text x="{PAD - 4}" y="{PAD + 8}" font-size="10" text-anchor="end">{ymax:.3g}</text>']
    return px, py, parts


def _svg(title: str, parts: list[str]) -> str:
    return (f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" role="img" '
            f'aria-label="{html.escape(title)}">{"".join(parts)}</svg><figcaption>{html.escape(title)}</figcaption></figure>')


def scatter_svg(pairs: list[list[float]]) -> str:
    pts = [(a, b) for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
    if not pts:
        return "<p>No logprobs returned: no scatter.</p>"
    lo = min(min(a, b) for a, b in pts)
    px, py, parts = _axes(lo, 0.0, lo, 0.0, "reference logprob", "provider logprob")
    parts.append(f'<line x1="{px(lo)}" y1="{py(lo)}" x2="{px(0)}" y2="{py(0)}" stroke="#bbb" stroke-dasharray="4"/>')
    parts += [f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="2" fill="#1f77b4" fill-opacity="0.6"/>' for a, b in pts]
    return _svg("Reference vs provider log-probability of each provider token", parts)


def null_svg(per_prompt: list[float], pool: list[float], critical: float | None) -> str:
    if not per_prompt:
        return "<p>No per-prompt logprob statistics.</p>"
    vals = list(per_prompt) + list(pool) + ([critical] if critical is not None else [])
    hi = max(vals) * 1.05 or 1.0
    bins = 30
    counts = [0] * bins
    for v in pool:
        counts[min(bins - 1, int(v / hi * bins))] += 1
    top = max(counts) or 1
    px, py, parts = _axes(0.0, hi, 0.0, 1.0, "per-prompt mean |delta logprob|", "null density (scaled)")
    for b, c in enumerate(counts):
        x0, x1 = px(b * hi / bins), px((b + 1) * hi / bins)
        parts.append(f'<rect x="{x0:.1f}" y="{py(c / top):.1f}" width="{max(0.5, x1 - x0 - 1):.1f}" '
                     f'height="{py(0) - py(c / top):.1f}" fill="#aaa"/>')
    if critical is not None:
        parts.append(f'<line x1="{px(critical):.1f}" y1="{PAD}" x2="{px(critical):.1f}" y2="{H - PAD}" stroke="#d62728" stroke-dasharray="3"/>')
    parts += [f'<line x1="{px(v):.1f}" y1="{py(0.0):.1f}" x2="{px(v):.1f}" y2="{py(0.25):.1f}" stroke="#1f77b4" stroke-width="2"/>'
              for v in per_prompt]
    return _svg("Per-prompt statistic (blue) against the calibrated honest null (grey; red: critical value of the mean)", parts)


def agreement_svg(by_position: list[list[Any]]) -> str:
    if not by_position:
        return "<p>No token-agreement data.</p>"
    n = max(int(p[0]) for p in by_position) + 1
    tot, raw, disc = [0] * n, [0] * n, [0] * n
    for pos, agrees, discounted in by_position:
        tot[int(pos)] += 1
        raw[int(pos)] += bool(agrees)
        disc[int(pos)] += bool(discounted)
    px, py, parts = _axes(0, max(1, n - 1), 0.0, 1.0, "output position", "share of prompts agreeing")
    for series, colour in ((raw, "#ff7f0e"), (disc, "#2ca02c")):
        pts = " ".join(f"{px(i):.1f},{py(series[i] / tot[i]):.1f}" for i in range(n) if tot[i])
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
    return _svg("Token agreement by position (orange: exact; green: near-ties discounted)", parts)


def _pct(x: float) -> str:
    return f"{x:.1%}"


def _marked(prefix: str, token: str, rest: str) -> str:
    shown = token if token.strip() else repr(token)  # a divergence on whitespace must still be visible
    return f"{html.escape(prefix)}<mark>{html.escape(shown)}</mark>{html.escape(rest)}"


def per_prompt_html(report: dict[str, Any]) -> str:
    """One row per prompt: the prompt, the provider's text and the reference's, the first divergence marked."""
    tau = report.get("honest_class", {}).get("tau")
    rows = []
    for r in report.get("per_prompt", []):
        prompt = html.escape(str(r.get("prompt", "")))
        if r.get("problem"):
            rows.append(f"<tr><td>{r['index'] + 1}</td><td>{prompt}</td><td colspan=\"3\">"
                        f"{html.escape(str(r['problem']))}</td></tr>")
            continue
        d = r.get("divergence")
        if d is None:
            same = "no divergence" if "divergence" in r else "not shown"
            rows.append(f"<tr><td>{r['index'] + 1}</td><td>{prompt}</td><td colspan=\"2\">"
                        f"{'the reference chooses every token the provider chose' if 'divergence' in r else ''}</td>"
                        f"<td>{same}</td></tr>")
            continue
        kind = ("near-tie: honest engines may differ here too" if tau is not None and d["margin"] < tau
                else "decisive: honest engines agree here")
        rows.append(f"<tr><td>{r['index'] + 1}</td><td>{prompt}</td>"
                    f"<td class=\"provider\">{_marked(d['prefix'], d['provider_token'], d['provider_rest'])}</td>"
                    f"<td class=\"reference\">{_marked(d['prefix'], d['reference_token'], d['reference_rest'])}</td>"
                    f"<td>token {d['position'] + 1} ({kind}; reference margin {d['margin']:.3g})</td></tr>")
    if not rows:
        return ""
    return ("<h2>Prompt by prompt</h2><p>The first token where the reference would choose differently is "
            "<mark>highlighted</mark>; after it the two texts continue from different words.</p>"
            "<table class=\"prompts\"><tr><th>#</th><th>prompt</th><th>provider's answer</th>"
            f"<th>reference's answer ({html.escape(report['reference']['name'])})</th><th>first divergence</th></tr>"
            f"{''.join(rows)}</table>")


def _class_line(report: dict[str, Any]) -> str:
    hc = report["honest_class"]
    setups = html.escape(", ".join(hc["setups"]))
    if report.get("verdict") == "consistent":
        return (f"<p>Honest class {html.escape(hc['name'])} ({setups}). What this verdict claims: "
                f"{html.escape(str(report.get('claim', '')))}.</p>")
    return f"<p>Honest class {html.escape(hc['name'])}: the set-ups {setups} are accepted as honest.</p>"


def _penalty_line(report: dict[str, Any]) -> str:
    pa = report.get("penalty_adjusted")
    if not pa:
        return ""
    return (f"<p class=\"penalty\">Positions set aside as repetition-penalty demotions: {pa['positions']} "
            f"({_pct(pa['fraction'])} of scored positions; limit {pa['limit']:.0%}, above it the run is "
            "inconclusive).</p>")


def render_html(report: dict[str, Any]) -> str:
    tests = report.get("tests", [])
    lp = next((t for t in tests if t["name"] == "logprob"), None)
    ta = next((t for t in tests if t["name"] == "token_agreement"), None)
    rows = "".join(
        f"<tr><td>{html.escape(t['name'])}</td><td>{t['statistic']:.6g}</td><td>{t['p_value']:.3g}</td>"
        f"<td>{t['samples']}</td><td>{'' if t['mde'] is None else format(t['mde'], '.4g')}</td>"
        f"<td>{'' if t['declared_effect'] is None else t['declared_effect']}</td><td>{t['powered']}</td></tr>"
        for t in tests)
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in report.get("reasons", []))
    dist = "".join(f"<li>{html.escape(r)}</li>" for r in report.get("distinguishes", []))
    pool = report.get("null_pool", [])
    power = "".join(
        f"<tr><td>{r['max_tokens']}</td><td>{r['decisive_positions']}</td><td>{r['hard_disagreement_rate']:.4g}</td>"
        f"<td>{r['p_value']:.3g}</td><td>{'' if r['mde'] is None else format(r['mde'], '.4g')}</td><td>{r['powered']}</td></tr>"
        for r in report.get("power_by_max_tokens", []))
    power_table = (f"<h2>Token-agreement power by tokens per answer</h2><table><tr><th>max tokens</th><th>decisive</th>"
                   f"<th>hard rate</th><th>p-value</th><th>min. detectable</th><th>powered</th></tr>{power}</table>"
                   if power else "")
    colour = {"consistent": "#2ca02c", "substituted": "#d62728"}.get(report.get("verdict"), "#ff7f0e")
    headline = html.escape(str(report.get("headline", "")))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>specguard audit report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}figure{{display:inline-block;margin:8px}}
.headline{{font-size:1.3em;font-weight:bold}}mark{{background:#ffd54f;font-weight:bold}}
table.prompts td{{white-space:pre-wrap;max-width:320px}}</style></head><body>
<h1>specguard audit: <span style="color:{colour}">{html.escape(str(report.get('verdict')))}</span></h1>
<p class="headline">{headline}</p>
<ul class="reasons">{reasons}</ul>
<p>Provider {html.escape(report['provider']['base_url'])} model {html.escape(report['provider']['model'])};
reference {html.escape(report['reference']['name'])} ({html.escape(report['reference']['digest'])});
endpoint {html.escape(str(report.get('endpoint', 'chat')))}.</p>
{_class_line(report)}
{_penalty_line(report)}
{per_prompt_html(report)}
<h2>Tests</h2>
<table><tr><th>test</th><th>statistic</th><th>p-value</th><th>samples</th><th>min. detectable</th><th>declared effect</th><th>powered</th></tr>{rows}</table>
<h2>What this run can distinguish</h2><ul>{dist}</ul>
{power_table}
<p>Prompts answered: {report['prompts']['answered']}/{report['prompts']['requested']}; tokens {report['tokens']['total']},
unmappable or unscored {report['tokens']['unmappable_or_unscored']}; retries {report['client'].get('retries')}.</p>
{scatter_svg(report.get('scatter', []))}
{null_svg(lp['details']['per_prompt'] if lp else [], pool, lp['details']['critical_value'] if lp else None)}
{agreement_svg(ta['details']['by_position'] if ta else [])}
</body></html>"""


def write_reports(report: dict[str, Any], out: Path) -> None:
    """Write report.json and report.html into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=float))
    (out / "report.html").write_text(render_html(report))


def _provider_figures(report: dict[str, Any]) -> tuple[str, str, str]:
    tests = report.get("tests", [])
    lp = next((t for t in tests if t["name"] == "logprob"), None)
    ta = next((t for t in tests if t["name"] == "token_agreement"), None)
    return (scatter_svg(report.get("scatter", [])),
            null_svg(lp["details"]["per_prompt"] if lp else [], report.get("null_pool", []),
                     lp["details"]["critical_value"] if lp else None),
            agreement_svg(ta["details"]["by_position"] if ta else []))


def render_multi_html(combined: dict[str, Any]) -> str:
    """One page for several providers: a verdict table and each plot side by side, one column per provider."""
    entries = combined.get("providers", [])
    reports = combined.get("reports", {})
    test_names: list[str] = []
    for e in entries:
        for t in e["tests"]:
            if t["name"] not in test_names:
                test_names.append(t["name"])
    colour = {"consistent": "#2ca02c", "substituted": "#d62728"}

    def cell(e: dict[str, Any], name: str) -> str:
        t = next((t for t in e["tests"] if t["name"] == name), None)
        if t is None:
            return "<td></td>"
        p = t["p_value"]
        return f"<td>{'' if p is None else format(p, '.3g')}{' *' if e['rejected'].get(name) else ''}</td>"

    head = "".join(f"<th>{html.escape(n)} p</th>" for n in test_names)
    rows = "".join(
        f"<tr><td>{html.escape(e['name'])}</td><td>{html.escape(e['base_url'])}</td>"
        f"<td style=\"color:{colour.get(e['verdict'], '#ff7f0e')}\">{html.escape(e['verdict'])}</td>"
        f"{''.join(cell(e, n) for n in test_names)}<td>{e['prompts']['answered']}/{e['prompts']['requested']}</td>"
        f"<td>{html.escape('; '.join(e['reasons']))}</td></tr>" for e in entries)
    budget = combined.get("budget")
    budget_html = ""
    if budget:
        budget_html = (f"<h2>Cost budget</h2><p>Max cost {budget['max_cost']:g}; spent {budget['spent']:.6g} "
                       f"({budget['tokens']} tokens); {html.escape(budget.get('reason', ''))}.</p>")
    figs = {e["name"]: _provider_figures(reports[e["name"]]) for e in entries if e["name"] in reports}
    plot_rows = ""
    for k, title in enumerate(("Reference vs provider logprobs", "Per-prompt statistic vs honest null",
                               "Token agreement by position")):
        cols = "".join(f"<div><h3>{html.escape(name)}</h3>{f[k]}</div>" for name, f in figs.items())
        plot_rows += f"<h2>{title}</h2><div style=\"display:flex;gap:8px;overflow-x:auto\">{cols}</div>"
    ref = combined.get("reference", {})
    overall = combined.get("verdict", "inconclusive")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>specguard audit: several providers</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px}}figure{{margin:4px}}</style></head><body>
<h1>specguard audit, {len(entries)} providers: <span style="color:{colour.get(overall, '#ff7f0e')}">{html.escape(overall)}</span></h1>
<p>Reference {html.escape(str(ref.get('name')))} ({html.escape(str(ref.get('digest')))}); every provider was asked the same
{combined.get('prompts', {}).get('planned_prompts')} prompts. * = rejected (Holm, alpha={combined.get('alpha')}).</p>
<table><tr><th>provider</th><th>URL</th><th>verdict</th>{head}<th>answered</th><th>reasons</th></tr>{rows}</table>
{budget_html}{plot_rows}</body></html>"""


def write_multi_reports(combined: dict[str, Any], out: Path) -> None:
    """Write the combined report.json and report.html of a several-provider run into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    slim = {k: v for k, v in combined.items() if k != "reports"}
    (out / "report.json").write_text(json.dumps(slim, indent=1, default=float))
    (out / "report.html").write_text(render_multi_html(combined))
