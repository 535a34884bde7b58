"""The pages a browser sees while its session wakes, and when it cannot start."""

from __future__ import annotations

import html

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="1">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Waking {name}…</title>
<style>
 body {{ font-family: system-ui, sans-serif; display: grid; place-items: center;
        min-height: 90vh; margin: 0; background: #f6f5f2; color: #333; }}
 main {{ text-align: center; }}
 .dot {{ display: inline-block; width: .6em; height: .6em; margin: 0 .15em;
        border-radius: 50%; background: #7a6; animation: b 1s infinite alternate; }}
 .dot:nth-child(2) {{ animation-delay: .33s; }} .dot:nth-child(3) {{ animation-delay: .66s; }}
 @keyframes b {{ from {{ opacity: .2; }} to {{ opacity: 1; }} }}
</style></head>
<body><main>
<h1>Waking <code>{name}</code></h1>
<p><span class="dot"></span><span class="dot"></span><span class="dot"></span></p>
<p>This session was asleep to save resources. It is starting now;
this page reloads by itself until it is ready.</p>
</main></body></html>
"""


def waiting_page(session: str) -> str:
    """The HTML of the waiting page for `session`."""
    return _PAGE.format(name=html.escape(session))


_FAILED = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{retry}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{name} could not start</title>
<style>
 body {{ font-family: system-ui, sans-serif; display: grid; place-items: center;
        min-height: 90vh; margin: 0; background: #f6f5f2; color: #333; }}
 main {{ max-width: 48rem; padding: 1rem; }}
 h1, .retry {{ text-align: center; }}
 .why {{ background: #fff3f0; border-left: .3em solid #c54; padding: .6em 1em; }}
 pre {{ background: #262626; color: #eee; padding: 1em; overflow-x: auto;
        font-size: .85em; max-height: 50vh; }}
 .event {{ color: #888; font-size: .85em; text-align: center; }}
</style></head>
<body><main>
<h1><code>{name}</code> could not start</h1>
<p class="why" id="why">{why}</p>
{log}
<p class="retry">siesta tries again in <b id="countdown">{retry}</b> s; this page reloads
by itself then.</p>
<p class="event">event <code id="event">{event}</code>: the operator finds it in siesta's log</p>
<script>
 let left = {retry};
 const shown = document.getElementById("countdown");
 setInterval(() => {{ left = Math.max(0, left - 1); shown.textContent = left; }}, 1000);
</script>
</main></body></html>
"""


def failure_page(session: str, why: str, retry: int, event: str, log: str | None) -> str:
    """The HTML of the page for a session whose start failed: the reason, the end of
    the backend's log (None: not shown), and a countdown to the next try (`retry` s)."""
    shown = ""
    if log is not None:
        body = html.escape(log) if log.strip() else "(the backend wrote nothing)"
        shown = f'<p>The end of its log:</p>\n<pre id="log">{body}</pre>'
    return _FAILED.format(
        name=html.escape(session), why=html.escape(why), retry=retry, event=event, log=shown
    )
