"""apt: a proxy whose .debs come from the cluster, verified through apt's own signed chain.

Using it (stock apt, unchanged):

    Acquire::http::Proxy "http://127.0.0.1:3142";          # every http:// source, proxy mode
    deb http://127.0.0.1:3142/https/deb.example.org/debian bookworm main   # an https:// source
    # or: `beiran apt configure --write` (Proxy-Auto-Detect: falls back to DIRECT without a daemon)

Configuration (`[plugins.apt]`):

    listen = "127.0.0.1:3142"       # the proxy's own listener (apt-cacher-ng's port too: move one of them)
    apt_dir = "/etc/apt"            # sources.list(.d) (for signed-by), trusted.gpg(.d), keyrings/
    keyring_dirs = []               # default: <apt_dir>/keyrings and /usr/share/keyrings
    keyrings = []                   # set: these files only, instead of every default place
    trusted_sources = []            # URL prefixes whose indexes count unsigned, like [trusted=yes]
    ca_file = ""                    # extra CA for https:// upstreams (private mirrors, tests)
    allow_hosts = []                # fnmatch patterns of upstream hosts; empty: any
    max_index_size = "1G"
    upstream_timeout = 20
    peer_index_fallback = true      # upstream unreachable and no copy here: ask peers for theirs
    advertise = true                # _apt_proxy._tcp through loaded discovery plugins (see below)

Index files pass through byte for byte (If-Modified-Since honoured, last good copy kept on disk);
a .deb that a verified index describes is a core fetch of its SHA256 (peers first, origin once per
cluster); anything else passes through, unshared. apt pipelines up to 10 requests per connection:
the .debs waiting behind the one being sent are fetched meanwhile (`pipeline.py`).

How hosts find it: `GET /` answers apt-cacher-ng's `406 Usage Information` (`usage.py`), which is
what Debian's `auto-apt-proxy` probes for on 127.0.0.1:3142 and on the default gateway's port 3142.
`_apt_proxy._tcp` (mDNS, for squid-deb-proxy-client) is announced only on this node's addresses the
proxy listens on and whose clients `client_cidrs` admits (`beiran.advertising`); a proxy on
loopback is not announced at all.
"""

__version__ = "0.1.0"
