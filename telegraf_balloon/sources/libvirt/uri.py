"""A libvirt URI: what of it may be shown, and what kind of host and driver it names."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redact_uri(uri: str) -> str:
    """The URI without a password (user names stay: they are not secret)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    user = f"{parts.username}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, user + host + port, parts.path, parts.query, parts.fragment))


def scrub(text: str, uri: str) -> str:
    """The text without the URI's password, should an error message quote the URI."""
    secret = urlsplit(uri).password
    return text.replace(secret, "***") if secret else text


def is_test_driver(uri: str) -> bool:
    """libvirt's test driver (test:///default, test+unix://...): a made-up host.

    It gives every connection a private copy of its node, and its node memory is the only
    truth about that host.
    """
    return urlsplit(uri).scheme.split("+")[0] == "test"


def is_local(uri: str) -> bool:
    """A URI served on this machine (no host part), by a driver of a real hypervisor.

    The test driver is local but describes a made-up host: its node memory is the truth there.
    """
    return not urlsplit(uri).hostname and not is_test_driver(uri)


def over_rpc(uri: str) -> bool:
    """Every driver but the in-process test driver talks to a daemon over libvirt's RPC,
    where keepalive notices a dead or hung daemon."""
    return not uri.startswith("test:")
