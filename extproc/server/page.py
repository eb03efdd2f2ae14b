"""The spend page at the admin address's `/`: each budget entry and subject with its spend
against its limit as a bar, the window and action, when it is under its limit again, when
it runs out at the current burn rate, and the latest blocked requests.

One HTML document with its CSS inline and no script: it works offline, behind a
port-forward, in any browser. Filters and pages are query parameters (`?namespace=team-a&
team=ml&page=2`), 100 rows a page, so a namespace with thousands of subjects is read a page
at a time.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from extproc.admission import BlockedRequest, counter_for
from extproc.config.model import Config
from extproc.spend import amount_text, charges_seen, remaining
from extproc.store import SpendStore

PAGE_ROWS = 100
NO_BLOCKS = '<tr><td colspan="4" class="muted">None since this sidecar started.</td></tr>'

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1d2330; background: #fff; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 24px 0 8px; }
.muted { color: #5d6677; } form { margin: 12px 0; } input, select, button { font: inherit; }
table { border-collapse: collapse; width: 100%; } th, td { padding: 6px 8px; text-align: left; }
th { border-bottom: 2px solid #d5d9e2; font-weight: 600; } td { border-bottom: 1px solid #eceef3; }
.bar { position: relative; width: 220px; height: 14px; background: #eceef3; border-radius: 3px; }
.bar span { position: absolute; left: 0; top: 0; bottom: 0; border-radius: 3px; background: #3b7ddd; }
.bar.warn span { background: #e6a23c; } .bar.over span { background: #d64545; }
.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
.blocked { color: #d64545; font-weight: 600; }
nav a { margin-right: 12px; }
"""


@dataclass(frozen=True, slots=True)
class Filters:
    namespace: str = ""
    team: str = ""
    page: int = 1

    @classmethod
    def of(cls, query: Mapping[str, str]) -> Filters:
        try:
            page = max(1, int(query.get("page", "1")))
        except ValueError:
            page = 1
        return cls(query.get("namespace", "").strip(), query.get("team", "").strip(), page)

    def link(self, page: int) -> str:
        params = {k: v for k, v in (("namespace", self.namespace), ("team", self.team)) if v}
        return "?" + urlencode({**params, "page": page})


def duration(seconds: float | None) -> str:
    """Seconds as an operator reads them: 45 s, 12 min, 3 h 12 min, 2 d 4 h."""
    if seconds is None:
        return "—"
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86_400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86_400} d {s % 86_400 // 3600} h"


async def render(
    config: Config,
    store: SpendStore,
    query: Mapping[str, str],
    *,
    exhaustion: Mapping[tuple[str, str], float] | None = None,
    blocks: Iterable[BlockedRequest] = (),
    now: float | None = None,
) -> bytes:
    """The page for these filters. `exhaustion`: seconds until each (budget id, subject)
    runs out at its burn rate, as the budget gauges last read it."""
    now = time.time() if now is None else now
    filters = Filters.of(query)
    subject = {"team": filters.team} if filters.team else None
    charges = await charges_seen(config, store, namespace=filters.namespace, subject=subject)
    pages = max(1, -(-len(charges) // PAGE_ROWS))
    page = min(filters.page, pages)
    shown = charges[(page - 1) * PAGE_ROWS : page * PAGE_ROWS]
    states = await store.read([counter_for(c) for c in shown], now) if shown else ()
    rows = []
    for charge, state in zip(shown, states, strict=True):
        e = charge.entry
        subject_text = charge.subject_text
        used = state.spend + state.held
        share = used / e.limit_units if e.limit_units > 0 else 1.0
        level = "over" if share >= 1 else "warn" if share >= 0.8 else ""
        blocked = state.over_limit and e.action.value == "Block"
        reset = f'<span class="blocked">{duration(state.reset_seconds)}</span>' if blocked else "not blocked"
        runs_out = (exhaustion or {}).get((e.budget_id, subject_text))
        rows.append(
            "<tr>"
            f"<td>{_e(e.budget_id)}</td><td>{_e(subject_text)}</td>"
            f"<td>{_e(e.window.value)}</td><td>{_e(e.action.value)}</td>"
            f'<td><div class="bar {level}" title="{share:.0%}">'
            f'<span style="width:{min(share, 1) * 100:.1f}%"></span></div></td>'
            f'<td class="num">{_e(amount_text(e, state.spend))} of {_e(amount_text(e, e.limit_units))}'
            f" {_e(e.unit.value)} ({share:.0%})</td>"
            f'<td class="num">{_e(amount_text(e, remaining(e, state)))}</td>'
            f'<td class="num">{reset}</td>'
            f'<td class="num">{duration(runs_out)}</td>'
            "</tr>"
        )
    namespaces = sorted({b.namespace for b in config.budgets})
    options = "".join(
        f'<option value="{_e(n)}"{" selected" if n == filters.namespace else ""}>{_e(n)}</option>'
        for n in namespaces
    )
    blocked_rows = "".join(
        f"<tr><td class='num'>{_e(time.strftime('%H:%M:%S', time.gmtime(b.at)))} UTC</td>"
        f"<td>{_e(b.budget_id)}</td><td>{_e(b.subject)}</td><td>{_e(b.route)}</td></tr>"
        for b in reversed(list(blocks))
    )
    pager = ""
    if pages > 1:
        links = [f'<a href="{_e(filters.link(page - 1))}">previous</a>' if page > 1 else ""]
        links.append(f"page {page} of {pages}")
        links.append(f'<a href="{_e(filters.link(page + 1))}">next</a>' if page < pages else "")
        pager = f"<nav>{' '.join(x for x in links if x)}</nav>"
    empty = '<tr><td colspan="9" class="muted">No budget matches.</td></tr>'
    document = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>LLM budgets</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_STYLE}</style></head>
<body>
<h1>LLM budgets</h1>
<p class="muted">{len(charges)} budget entries and subjects, spend over rolling windows,
read from the spend store at {_e(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now)))} UTC.</p>
<form method="get">
<label>Namespace <select name="namespace"><option value="">all</option>{options}</select></label>
<label>Team <input name="team" value="{_e(filters.team)}" placeholder="any"></label>
<button type="submit">Filter</button>
</form>
{pager}
<table id="budgets">
<thead><tr><th>Budget</th><th>Subject</th><th>Window</th><th>Action</th><th>Spend</th><th></th>
<th>Remaining</th><th>Under the limit again in</th><th>Runs out in</th></tr></thead>
<tbody>{"".join(rows) or empty}</tbody>
</table>
{pager}
<h2>Recent blocks</h2>
<table id="blocks"><thead><tr><th>At</th><th>Budget</th><th>Subject</th><th>Route</th></tr></thead>
<tbody>{blocked_rows or NO_BLOCKS}</tbody>
</table>
</body></html>
"""
    return document.encode()


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)
