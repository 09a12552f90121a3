"""Which client a request comes from: the peer's address, or the proxy's word for it when told to trust one."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


def forwarded_client(forwarded_for: str) -> str | None:
    """The client a trusted proxy names in ``X-Forwarded-For``: the rightmost public address.

    Each proxy appends the address it saw, so the entries to the right are the trusted proxies'
    own (private) hops and anything to the left may be made up by the client; with no public
    address (a private network), the rightmost entry.
    """
    entries = [entry.strip() for entry in forwarded_for.split(",") if entry.strip()]
    valid = [entry for entry in entries if _is_address(entry)]
    public = [entry for entry in valid if ipaddress.ip_address(entry).is_global]
    chosen = public or valid
    return chosen[-1] if chosen else None


def client_address(peer: str | None, headers: Iterable[tuple[bytes, bytes]], *, behind_proxy: bool) -> str:
    """The address to count a request against: ``peer``, or with ``behind_proxy`` the forwarded client."""
    if behind_proxy:
        forwarded = b",".join(value for name, value in headers if name.lower() == b"x-forwarded-for")
        named = forwarded_client(forwarded.decode("latin-1"))
        if named is not None:
            return named
    return peer or "unknown"


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def client_of(request: object) -> str | None:
    """The address of a ``gr.Request`` or Starlette request's client (as the guard named it)."""
    client = getattr(request, "client", None)
    return getattr(client, "host", None)
