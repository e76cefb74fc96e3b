"""A plain python-zeroconf browser, run as a script inside a network namespace (see aptdetect.py):
browse the given service types on one interface, resolve what is announced, print JSON.

    mdns_browse.py --interface IP --type T [--type T ...] [--expect NAME ...] [--absent NAME ...]

It stops once every --expect name resolved (or at --timeout), browses --linger seconds more, then
asks for each --absent name directly (a full SRV/TXT/address query) and reports what came back.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

from zeroconf import IPVersion, ServiceBrowser, ServiceListener, Zeroconf


def describe(info) -> dict:  # type: ignore[no-untyped-def]
    return {"port": info.port, "addresses": sorted(info.parsed_addresses()), "server": info.server,
            "txt": {k.decode(errors="replace"): (v or b"").decode(errors="replace")
                    for k, v in (info.properties or {}).items()}}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--interface", required=True)
    ap.add_argument("--type", dest="types", action="append", default=[])
    ap.add_argument("--expect", action="append", default=[])
    ap.add_argument("--absent", action="append", default=[])
    ap.add_argument("--timeout", type=float, default=20)
    ap.add_argument("--linger", type=float, default=2)
    args = ap.parse_args()

    zc = Zeroconf(interfaces=[args.interface], ip_version=IPVersion.V4Only)
    names: dict[str, str] = {}  # name -> type
    lock = threading.Lock()

    class Listener(ServiceListener):
        def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
            with lock:
                names[name] = type_

        update_service = add_service

        def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
            with lock:
                names.pop(name, None)

    browser = ServiceBrowser(zc, args.types, listener=Listener())
    resolved: dict[str, dict] = {}

    def resolve_all() -> None:
        with lock:
            current = dict(names)
        for name, type_ in current.items():
            info = zc.get_service_info(type_, name, timeout=1500)
            if info is not None and info.port:
                resolved[name] = {"type": type_, **describe(info)}

    try:
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and not set(args.expect) <= set(resolved):
            resolve_all()
            time.sleep(0.3)
        time.sleep(args.linger)
        resolve_all()
        absent = {}
        for name in args.absent:
            type_ = name.split(".", 1)[1]
            info = zc.get_service_info(type_, name, timeout=3000)
            absent[name] = describe(info) if info is not None else None
    finally:
        browser.cancel()
        zc.close()
    json.dump({"services": resolved, "absent": absent, "seen": sorted(names)}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
