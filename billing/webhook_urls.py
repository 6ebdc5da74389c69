"""Which webhook URLs we will call: the SSRF policy, one function for submission and send.

A webhook URL is chosen by the customer, so without a policy it is a way to make our
servers call our own network (Redis, the database, the cloud metadata service). The
same `check_url` runs when a URL is given (422) and at every send, on every address
the host resolves to; the sender then connects to the vetted address itself, so DNS
cannot answer differently between the check and the connection.

Development (`allow_private`) opens loopback and private LAN ranges only: cloud
metadata, link-local and the odd ranges stay refused, and so do the ports of the stack's
own services (`deny_ports`, which `make run` fills), so a tenant's URL can never reach
Flower, Redis or the API through the dev allowance.

No network here: the resolver is passed in (`workers.webhooks.resolve_host` in
production, a dict in tests).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from billing.errors import InvalidInput

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[IPAddress]]

MAX_URL_LENGTH = 2000
# Cloud metadata endpoints: AWS/GCP/Azure/OpenStack, AWS ECS, Oracle, Alibaba (IPv4) and
# AWS (IPv6). Refused even in development, before any range check: two of them sit in
# ranges the development switch opens (100.64/10, fc00::/7).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in (
        "169.254.169.254",
        "169.254.170.2",
        "192.0.0.192",
        "100.100.100.200",
        "fd00:ec2::254",
    )
)
METADATA_HOSTS = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
# What WEBHOOK_ALLOW_PRIVATE_URLS opens: loopback and private LAN ranges, nothing else
# (not link-local, unspecified, multicast, reserved, nor IPv4 hidden in IPv6).
DEV_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in (
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "::1/128",
        "fc00::/7",
    )
)
# NAT64 embeds an IPv4 address in IPv6; 64:ff9b::7f00:1 reaches 127.0.0.1 on such networks.
NAT64 = ipaddress.ip_network("64:ff9b::/96")
# The WHATWG URL parser reads a host whose last label is a number as an IPv4 address
# (`2130706433`, `0x7f.1`, `0177.0.0.1` all mean 127.0.0.1), so anything ending in a
# numeric label must be a canonical dotted quad or it is refused.
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$", re.IGNORECASE)
# A DNS name (lowercased): labels of 1-63 letters, digits, '-' or '_', 253 characters in
# all. Anything else cannot resolve, and some of it (`a..com`, a 64-character label)
# makes the resolver's IDNA step raise UnicodeError instead of answering.
_HOST_LABEL = re.compile(r"^[a-z0-9_-]{1,63}$")
MAX_HOST_LENGTH = 253


class UnsafeWebhookUrl(InvalidInput):
    """A URL or an address we refuse to call."""


@dataclass(frozen=True)
class WebhookTarget:
    """A checked URL: where to connect (the vetted addresses) and what to ask for."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]

    @property
    def host_header(self) -> str:
        """Host header value: the name (bracketed for IPv6), the port if not default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True)
class UrlPolicy:
    """`check_url`'s settings, passed around as one value (strict and offline by default)."""

    allow_private: bool = False
    resolve: Resolver | None = None
    deny_ports: frozenset[int] = frozenset()

    def check(
        self, url: str, *, must_resolve: bool = True, field: str = "webhook_url"
    ) -> WebhookTarget:
        return check_url(
            url,
            allow_private=self.allow_private,
            resolve=self.resolve,
            must_resolve=must_resolve,
            field=field,
            deny_ports=self.deny_ports,
        )


STRICT_URLS = UrlPolicy()


def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to, in the resolver's order, without duplicates."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]))
        if address not in addresses:
            addresses.append(address)
    return addresses


def url_policy(*, allow_private: bool, deny_ports: frozenset[int] = frozenset()) -> UrlPolicy:
    """The policy for URLs given to the API. Names are resolved in development too: a
    name may point at a metadata or link-local address, which no mode allows."""
    return UrlPolicy(allow_private=allow_private, resolve=resolve_host, deny_ports=deny_ports)


def check_url(
    url: str,
    *,
    allow_private: bool,
    resolve: Resolver | None = None,
    must_resolve: bool = True,
    field: str = "webhook_url",
    deny_ports: frozenset[int] = frozenset(),
) -> WebhookTarget:
    """The URL's target if we may call it, else `UnsafeWebhookUrl` (a 422 in the API).

    Without `resolve`, only the URL's own text is checked (literal addresses, names
    like `localhost`). With it, every address the name resolves to must be public. A
    name that does not resolve is refused at send time (`must_resolve`) but accepted
    at submission, where a DNS hiccup should not refuse a job; the send checks again.
    `allow_private` (development only) lets loopback and private LAN addresses through
    (`DEV_NETWORKS`), never malformed URLs, odd IP spellings or metadata endpoints.
    A port in `deny_ports` (the stack's own services) is refused on any host: matching
    the port alone leaves no host spelling (alias, name, IPv6 form) to get around it.
    """
    parts = _parse(url, field)
    host = parts.host
    if parts.port in deny_ports:
        raise _refused(field, f"webhook_url port {parts.port} belongs to this service's stack.")
    literal = _literal_address(host, field)
    if literal is not None:
        check_address(literal, allow_private=allow_private, field=field)
        addresses: tuple[IPAddress, ...] = (literal,)
    elif host in METADATA_HOSTS:
        raise _refused(field, f"webhook_url host {host!r} is a cloud metadata service.")
    elif not allow_private and _is_local_name(host):
        raise _refused(field, f"webhook_url host {host!r} is a local name.")
    elif resolve is None:
        addresses = ()
    else:
        try:
            addresses = tuple(resolve(host, parts.port))
        except OSError:
            addresses = ()
        except UnicodeError:
            raise _invalid(field, f"webhook_url host {host!r} is not a valid host name.") from None
        if not addresses and must_resolve:
            raise _refused(field, f"webhook_url host {host!r} does not resolve.")
        for address in addresses:
            _check_resolved(host, address, allow_private=allow_private, field=field)
    return WebhookTarget(url, parts.scheme, host, parts.port, addresses)


def check_address(
    address: IPAddress, *, allow_private: bool = False, field: str = "webhook_url"
) -> None:
    """Refuse anything but a globally routable unicast address (or, in development, a
    loopback or private LAN one). The message names the address: for addresses the
    tenant wrote, not for what their names resolve to (`_check_resolved`)."""
    reason = refusal_reason(address, allow_private=allow_private)
    if reason is not None:
        raise _refused(field, f"webhook_url resolves to {address}, a {reason} address.")


def _check_resolved(host: str, address: IPAddress, *, allow_private: bool, field: str) -> None:
    """`check_address` for an address `host` resolved to. The tenant is not told which
    address (that would map our internal DNS for them); the server log says."""
    reason = refusal_reason(address, allow_private=allow_private)
    if reason is not None:
        log.warning("webhook_url host %r resolves to %s, a %s address", host, address, reason)
        raise _refused(field, f"webhook_url host {host!r} resolves to a non-public address.")


def refusal_reason(address: IPAddress, *, allow_private: bool = False) -> str | None:
    """Why `address` may not be called, or None when it is public (or, with
    `allow_private`, in `DEV_NETWORKS`)."""
    if address in METADATA_ADDRESSES:
        return "cloud metadata"
    if allow_private and any(address in network for network in DEV_NETWORKS):
        return None
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if address.teredo:
            embedded = address.teredo[1]
        if embedded is not None or address in NAT64:
            return "IPv4-embedding IPv6"
        if address.scope_id:
            return "scoped IPv6"
        if address.is_site_local:  # fec0::/10: deprecated, yet is_global calls it global
            return "site-local"
    checks = (
        (address.is_loopback, "loopback"),
        (address.is_unspecified, "unspecified"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (address.is_private, "private"),
        (address.is_reserved, "reserved"),
        (not address.is_global, "non-global"),
    )
    return next((name for refused, name in checks if refused), None)


@dataclass(frozen=True)
class _Parts:
    scheme: str
    host: str
    port: int


def _parse(url: str, field: str) -> _Parts:
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise _invalid(field, f"webhook_url must be an http(s) URL of at most {MAX_URL_LENGTH}.")
    if any(ch.isspace() or not ch.isprintable() or ch == "\\" for ch in url):
        raise _invalid(
            field,
            "webhook_url must not contain spaces, control or non-printable characters or '\\'.",
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _invalid(field, "webhook_url is not a valid URL.") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise _invalid(field, "webhook_url must be an absolute http or https URL.")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise _invalid(field, "webhook_url must not contain credentials (user:pass@).")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise _invalid(field, "webhook_url must name a host.")
    if not host.isascii():
        raise _invalid(field, "webhook_url host must be ASCII (use the punycode form).")
    host = host.lower()
    if ":" not in host and not _is_host_name(host):
        raise _invalid(
            field,
            "webhook_url host must be a DNS name (labels of 1-63 letters, digits, '-' or '_', "
            f"at most {MAX_HOST_LENGTH} characters) or an IP address.",
        )
    if port == 0:
        raise _invalid(field, "webhook_url port must be 1-65535.")
    return _Parts(scheme, host, port or (443 if scheme == "https" else 80))


def _is_host_name(host: str) -> bool:
    return len(host) <= MAX_HOST_LENGTH and all(_HOST_LABEL.match(x) for x in host.split("."))


def _literal_address(host: str, field: str) -> IPAddress | None:
    """The address a host spells literally, refusing spellings other than the canonical."""
    if ":" in host:
        if "%" in host:
            raise _refused(field, "webhook_url must not use a scoped IPv6 address.")
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            raise _invalid(field, "webhook_url has an invalid IPv6 address.") from None
    if _NUMERIC_LABEL.match(host.rsplit(".", 1)[-1]):
        try:
            return ipaddress.IPv4Address(host)
        except ValueError:
            raise _refused(
                field,
                f"webhook_url host {host!r} is an IP address in a non-standard spelling "
                "(decimal, octal or hex); write it as a dotted quad.",
            ) from None
    return None


def _is_local_name(host: str) -> bool:
    return host == "localhost" or host.endswith(
        (".localhost", ".local", ".internal", ".localdomain")
    )


def _invalid(field: str, message: str) -> InvalidInput:
    return InvalidInput(message, fields={field: "invalid URL"})


def _refused(field: str, message: str) -> UnsafeWebhookUrl:
    return UnsafeWebhookUrl(
        message + " Webhooks go to public http(s) addresses only.",
        fields={field: "not a public address"},
    )
