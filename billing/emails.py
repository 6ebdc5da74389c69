"""One account per mailbox: the normalised form of an email address.

Case never matters. Providers that deliver `a.b+anything@gmail.com` to `ab@gmail.com`
would otherwise hand out one free trial per spelling, so for them the `+tag` (and for
Gmail the dots) are dropped and the domain aliases folded into one.
"""

from __future__ import annotations

# domain -> the domain its mailboxes are known by
DOMAIN_ALIASES = {"googlemail.com": "gmail.com", "hotmail.com": "outlook.com"}
# Providers that ignore dots in the local part.
DOTS_IGNORED = frozenset({"gmail.com"})
# Providers that deliver `local+tag@` to `local@` (sub-addressing).
PLUS_TAGS = frozenset(
    {
        "gmail.com",
        "outlook.com",
        "live.com",
        "icloud.com",
        "me.com",
        "fastmail.com",
        "proton.me",
        "protonmail.com",
        "pm.me",
        "yandex.com",
        "zoho.com",
    }
)


def normalize_email(email: str) -> str:
    """`A.B+x@GoogleMail.com` -> `ab@gmail.com`; other providers: lower case only."""
    local, _, domain = email.strip().lower().rpartition("@")
    domain = DOMAIN_ALIASES.get(domain, domain)
    if domain in PLUS_TAGS:
        local = local.split("+", 1)[0]
    if domain in DOTS_IGNORED:
        local = local.replace(".", "")
    return f"{local}@{domain}"
