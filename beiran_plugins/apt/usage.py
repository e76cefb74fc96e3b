"""What the proxy answers to `GET /`: apt-cacher-ng's "406 Usage Information" status line and a
short page. Debian's `auto-apt-proxy` probes port 3142 of 127.0.0.1 and the default gateway with
`GET /` and takes the host as an apt proxy only when that status line comes back; a person who
opens the URL in a browser learns what is listening and how to use it."""

from __future__ import annotations

import html

STATUS, REASON = 406, "Usage Information"

_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Beiran apt proxy</title></head>
<body>
<h1>Beiran apt proxy</h1>
<p>This is the apt proxy of a Beiran node (node {uuid}): an HTTP proxy for apt whose
<code>.deb</code> files come from the nodes of the cluster, checked against apt's signed indexes.
It is not a web site; point apt at it.</p>
<p>On the node itself: <code>beiran apt configure --write</code>. By hand, in
<code>/etc/apt/apt.conf.d/30proxy</code>:</p>
<pre>Acquire::http::Proxy "http://THIS-HOST:{port}";</pre>
<p>https:// sources go through the mirror path instead:
<code>deb http://THIS-HOST:{port}/https/deb.example.org/debian bookworm main</code></p>
<p>Debian's <code>auto-apt-proxy</code> and <code>squid-deb-proxy-client</code> find this proxy by
themselves when it listens where they look (port 3142 on 127.0.0.1 or the default gateway; mDNS
<code>_apt_proxy._tcp</code>).</p>
</body></html>
"""


def usage_page(uuid: str, port: int) -> str:
    return _PAGE.format(uuid=html.escape(uuid), port=int(port))
