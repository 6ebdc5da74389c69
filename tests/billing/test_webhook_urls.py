"""The SSRF policy on its own: every refused URL form, name resolution, the dev switch."""

from __future__ import annotations

import ipaddress

import pytest

from billing.errors import InvalidInput
from billing.webhook_urls import UnsafeWebhookUrl, UrlPolicy, check_url, refusal_reason

PUBLIC = ipaddress.ip_address("93.184.216.34")
DNS = {
    "hooks.example.com": [PUBLIC],
    "internal.example.com": [ipaddress.ip_address("10.1.2.3")],
    "rebind.example.com": [PUBLIC, ipaddress.ip_address("127.0.0.1")],
    "v6.example.com": [ipaddress.ip_address("2606:2800:220:1:248:1893:25c8:1946")],
    "mapped.example.com": [ipaddress.ip_address("::ffff:169.254.169.254")],
    "rebind-metadata.example.com": [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("169.254.169.254"),
    ],
    "linklocal.example.com": [ipaddress.ip_address("fe80::1")],
    "sitelocal.example.com": [PUBLIC, ipaddress.ip_address("fec0::1")],
}


def resolve(host: str, _port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    if host not in DNS:
        raise OSError(f"no such host {host}")
    return DNS[host]


# What httpx refuses to send (it raised at every attempt) and hosts that are no DNS name
# (the real resolver raised UnicodeError on the first two): refused as malformed.
BAD_CHARACTERS = ["https://8.8.8.8/hook\x7f", "https://8.8.8.8/\x9f", "https://8.8.8.8/\u200b"]
BAD_HOSTS = [
    "https://a..com/",
    "https://" + "a" * 64 + ".com/",
    "https://" + "a." * 127 + "com/",
    "http://exa%41mple.com/",
    "http://exa<mple.com/",
]
# Refused whatever WEBHOOK_ALLOW_PRIVATE_URLS says: not a URL we would ever call.
MALFORMED = [
    "ftp://example.com/hook",
    "file:///etc/passwd",
    "gopher://example.com:70/_",
    "javascript:alert(1)",
    "//example.com/hook",
    "example.com/hook",
    "http:///hook",
    "http://user:password@example.com/hook",
    "http://user@example.com/hook",
    "http://example.com:0/hook",
    "http://example.com:99999/hook",
    "http://exa mple.com/hook",
    "http://example.com\\@127.0.0.1/",
    "http://[::1/",
    "http://" + "a" * 2000 + ".com/",
    *BAD_CHARACTERS,
    *BAD_HOSTS,
]
# Odd spellings of IPv4 addresses: decimal, octal, hex, short forms.
ODD_SPELLINGS = [
    "http://2130706433/",
    "http://0177.0.0.1/",
    "http://0x7f.1/",
    "http://0x7f000001/",
    "http://127.1/",
    "http://127.0.1/",
    "http://017700000001/",
    "http://0/",
    "http://8.8.8.010/",
]
# Refused unless private URLs are allowed (development).
PRIVATE = [
    "http://127.0.0.1/hook",
    "http://127.9.9.9:8080/hook",
    "http://localhost/hook",
    "http://LOCALHOST.:5000/hook",
    "http://api.localhost/hook",
    "http://printer.local/hook",
    "http://10.0.0.1/hook",
    "http://172.16.5.4/hook",
    "http://192.168.1.1/hook",
    "http://100.64.0.1/hook",
    "http://[::1]/hook",
    "http://[fc00::1]/hook",
    "http://internal.example.com/hook",
]
# Refused in every mode: cloud metadata, link-local, and the ranges that are neither
# public nor the developer's own machine or LAN.
NEVER = [
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://METADATA.GOOGLE.INTERNAL./computeMetadata/v1/",
    "http://metadata/computeMetadata/v1/",
    "http://instance-data/latest/meta-data/",
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.170.2/v2/credentials",
    "http://100.100.100.200/latest/meta-data/",
    "http://192.0.0.192/opc/v1/instance/",
    "http://169.254.1.1/hook",
    "http://0.0.0.0/hook",
    "http://224.0.0.1/hook",
    "http://239.255.255.250/hook",
    "http://255.255.255.255/hook",
    "http://240.0.0.1/hook",
    "http://192.0.2.1/hook",
    "http://[::]/hook",
    "http://[fe80::1]/hook",
    "http://[fec0::1]/hook",
    "http://[feff:ffff::1]/hook",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://[ff02::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[::ffff:10.0.0.1]/hook",
    "http://[::ffff:8.8.8.8]/hook",
    "http://[::ffff:7f00:1]/hook",
    "http://[::ffff:169.254.169.254]/hook",
    "http://[64:ff9b::7f00:1]/hook",
    "http://[2002:7f00:1::]/hook",
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/hook",
    "http://rebind-metadata.example.com/hook",
    "http://mapped.example.com/hook",
    "http://linklocal.example.com/hook",
    "http://sitelocal.example.com/hook",
]


@pytest.mark.parametrize("url", MALFORMED + ODD_SPELLINGS + PRIVATE + NEVER)
def test_refused_when_private_urls_are_not_allowed(url: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        check_url(url, allow_private=False, resolve=resolve)

    assert refused.value.code == "invalid_request"
    assert list(refused.value.details["fields"]) == ["webhook_url"]


@pytest.mark.parametrize("url", MALFORMED + ODD_SPELLINGS + NEVER)
def test_malformed_urls_odd_spellings_and_metadata_are_refused_even_in_development(
    url: str,
) -> None:
    with pytest.raises(InvalidInput):
        check_url(url, allow_private=True, resolve=resolve)
    with pytest.raises(InvalidInput):
        UrlPolicy(allow_private=True, resolve=resolve).check(url, must_resolve=False)


@pytest.mark.parametrize("url", PRIVATE)
def test_development_switch_allows_loopback_and_private_lan_addresses(url: str) -> None:
    local = {"internal.example.com": [ipaddress.ip_address("10.1.2.3")]}

    target = check_url(
        url,
        allow_private=True,
        resolve=lambda host, _port: local.get(host) or [ipaddress.ip_address("127.0.0.1")],
    )

    assert target.url == url


STACK_PORTS = frozenset({5555, 6379, 5000})


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:5555/api/worker/shutdown/worker@host",
        "http://localhost:5555/api/worker/shutdown/worker@host",
        "http://[::1]:6379/",
        "http://10.0.0.1:5000/v1/admin/accounts",
        "https://hooks.example.com:5555/in",
    ],
)
def test_the_stacks_own_ports_are_refused_on_any_host_even_in_development(url: str) -> None:
    with pytest.raises(UnsafeWebhookUrl, match="belongs to this service's stack"):
        check_url(url, allow_private=True, resolve=resolve, deny_ports=STACK_PORTS)
    with pytest.raises(UnsafeWebhookUrl, match="belongs to this service's stack"):
        UrlPolicy(resolve=resolve, deny_ports=STACK_PORTS).check(url, must_resolve=False)


def test_other_ports_stay_open_with_a_deny_list() -> None:
    target = check_url(
        "http://127.0.0.1:8080/hook", allow_private=True, resolve=resolve, deny_ports=STACK_PORTS
    )

    assert target.port == 8080


def test_a_refused_address_names_the_reason() -> None:
    with pytest.raises(UnsafeWebhookUrl, match=r"169\.254\.169\.254, a cloud metadata address"):
        check_url("http://169.254.169.254/", allow_private=False)
    with pytest.raises(UnsafeWebhookUrl, match="IPv4-embedding"):
        check_url("http://[::ffff:127.0.0.1]/", allow_private=False)


@pytest.mark.parametrize("allow_private", [False, True])
def test_ipv6_site_local_addresses_are_refused(allow_private: bool) -> None:
    """fec0::/10 is deprecated but still routed inside some networks, and Python calls it
    global, so only `is_site_local` catches it."""
    for text in ("fec0::1", "fed0:1::2", "feff:ffff::1"):
        address = ipaddress.ip_address(text)
        assert refusal_reason(address, allow_private=allow_private) == "site-local"
    with pytest.raises(UnsafeWebhookUrl, match=r"fec0::1, a site-local address"):
        check_url("http://[fec0::1]/hook", allow_private=allow_private)


def test_every_resolved_address_must_be_public() -> None:
    """One private answer among public ones is enough to refuse (rebinding, split DNS)."""
    with pytest.raises(UnsafeWebhookUrl, match="resolves to a non-public address") as refused:
        check_url("https://rebind.example.com/hook", allow_private=False, resolve=resolve)

    assert "127.0.0.1" not in refused.value.message


def test_public_urls_pass_with_their_vetted_addresses() -> None:
    target = check_url("https://hooks.example.com/a/b?c=d", allow_private=False, resolve=resolve)

    assert (target.scheme, target.host, target.port) == ("https", "hooks.example.com", 443)
    assert target.addresses == (PUBLIC,)
    assert target.host_header == "hooks.example.com"
    v6 = check_url("http://v6.example.com:8080/", allow_private=False, resolve=resolve)
    assert v6.host_header == "v6.example.com:8080"
    literal = check_url("http://[2606:4700::1111]:81/", allow_private=False)
    assert literal.host_header == "[2606:4700::1111]:81"
    assert check_url("http://8.8.8.8/", allow_private=False).addresses == (
        ipaddress.ip_address("8.8.8.8"),
    )


def test_a_resolver_that_cannot_encode_the_name_is_a_refusal_not_a_crash() -> None:
    """getaddrinfo's IDNA step raises UnicodeError (not OSError) on some names."""

    def resolve(host: str, _port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        raise UnicodeError("label empty or too long")

    with pytest.raises(InvalidInput, match="not a valid host name"):
        UrlPolicy(resolve=resolve).check("https://hooks.example.com/", must_resolve=False)


def test_an_unresolvable_name_is_refused_at_send_time_but_accepted_at_submission() -> None:
    with pytest.raises(UnsafeWebhookUrl, match="does not resolve"):
        check_url("https://nowhere.example.com/", allow_private=False, resolve=resolve)

    target = UrlPolicy(resolve=resolve).check("https://nowhere.example.com/", must_resolve=False)
    assert target.addresses == ()


def test_without_a_resolver_only_the_text_is_checked() -> None:
    policy = UrlPolicy()

    assert policy.check("https://anything.example.org/hook").addresses == ()
    with pytest.raises(UnsafeWebhookUrl):
        policy.check("http://localhost/hook")
    with pytest.raises(UnsafeWebhookUrl):
        policy.check("http://127.0.0.1/hook")
