"""The page a browser sees while its session wakes."""

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
