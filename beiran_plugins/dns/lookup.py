"""Look up one configured name with dnspython's async resolver: SRV (host and port per record, the
hosts' addresses from the additional section or A/AAAA queries) or a plain host name (A/AAAA).

"The name has no records" (NXDOMAIN, no answer) is a result: an empty list, so its peers vanish.
Anything else (timeout, SERVFAIL, REFUSED) is LookupFailed: the caller keeps what it had.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

from beiran.errors import ConfigError
from beiran_plugins.dns.settings import Name, Settings

MAX_TARGETS = 256  # per name; a runaway zone cannot make this node dial thousands of hosts


class LookupFailed(Exception):
    """The name could not be looked up now (as opposed to: it has no records)."""


@dataclass
class Result:
    endpoints: list[tuple[str, int]] = field(default_factory=list)  # (ip, port)
    ttl: int | None = None  # the smallest TTL of the records used


def make_resolver(settings: Settings) -> dns.asyncresolver.Resolver:
    if settings.nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in settings.nameservers]
    else:
        try:
            resolver = dns.asyncresolver.Resolver()
        except dns.exception.DNSException as exc:
            raise ConfigError(f"[plugins.dns]: no nameservers configured and none from the system: {exc}") from None
    resolver.lifetime = settings.timeout
    resolver.timeout = min(settings.timeout, 2.0)  # per try; a dead server is skipped in time
    resolver.cache = None
    return resolver


def _min_ttl(*ttls: int | None) -> int | None:
    known = [t for t in ttls if t is not None]
    return min(known) if known else None


def _usable(addr: str) -> bool:
    ip = ipaddress.ip_address(addr)
    return not (ip.is_link_local or ip.is_unspecified or ip.is_multicast)


async def _query(resolver: dns.asyncresolver.Resolver, qname: str, rdtype: str) -> dns.resolver.Answer | None:
    try:
        return await resolver.resolve(qname, rdtype, search=not qname.endswith("."))
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    except dns.resolver.LifetimeTimeout:
        raise LookupFailed(f"{qname} {rdtype}: no answer within {resolver.lifetime:g}s") from None
    except dns.resolver.NoNameservers:
        raise LookupFailed(f"{qname} {rdtype}: every nameserver failed (SERVFAIL or REFUSED)") from None
    except dns.exception.DNSException as exc:
        raise LookupFailed(f"{qname} {rdtype}: {type(exc).__name__}: {exc}") from None


async def _addresses(resolver: dns.asyncresolver.Resolver, host: str) -> tuple[list[str], int | None]:
    """A and AAAA of one host; fails only when neither family could be asked."""
    answers = await asyncio.gather(_query(resolver, host, "A"), _query(resolver, host, "AAAA"),
                                   return_exceptions=True)
    addrs: list[str] = []
    ttls: list[int | None] = []
    errors = [a for a in answers if isinstance(a, BaseException)]
    for answer in answers:
        if isinstance(answer, dns.resolver.Answer) and answer.rrset is not None:
            addrs += [r.address for r in answer.rrset]
            ttls.append(answer.rrset.ttl)
    if errors and not addrs:
        raise errors[0]
    return [a for a in addrs if _usable(a)], _min_ttl(*ttls)


async def lookup(resolver: dns.asyncresolver.Resolver, name: Name) -> Result:
    if not name.srv:
        addrs, ttl = await _addresses(resolver, name.name)
        assert name.port is not None
        return Result([(a, name.port) for a in addrs[:MAX_TARGETS]], ttl)
    answer = await _query(resolver, name.name, "SRV")
    if answer is None or answer.rrset is None:
        return Result([], None)
    extra: dict[str, list[str]] = {}
    for rrset in answer.response.additional:  # the server often sends the targets' addresses along
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            extra.setdefault(rrset.name.to_text().lower(), []).extend(r.address for r in rrset)
    ttl = answer.rrset.ttl
    records = sorted(answer.rrset, key=lambda r: (r.priority, -r.weight))[:MAX_TARGETS]
    endpoints: list[tuple[str, int]] = []
    for rec in records:
        target = rec.target.to_text().lower()
        if target == ".":  # "no service here" (RFC 2782)
            continue
        if target in extra:
            addrs = [a for a in extra[target] if _usable(a)]
        else:
            addrs, host_ttl = await _addresses(resolver, target)
            ttl = _min_ttl(ttl, host_ttl)
        endpoints += [(a, rec.port) for a in addrs if (a, rec.port) not in endpoints]
    return Result(endpoints[:MAX_TARGETS], ttl)
