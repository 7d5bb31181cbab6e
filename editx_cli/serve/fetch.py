"""Audio by URL (the Step-Audio API's prompt_audio_url / input_audio_url), for a server started
with --allow-url-fetch: http and https only, public addresses only, the body bounded in size
and the whole fetch in time.

The name is resolved once and the connection made to that address (the Host header and TLS
name stay the URL's), so a name that resolves to a public address for the check and to
127.0.0.1 for the connection cannot reach the server's own machine or network. Each redirect
is checked the same way.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit

MAX_REDIRECTS = 3
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class FetchError(Exception):
    """Why a URL was not fetched, in words for the client."""


def public(address: Address) -> bool:
    """An address on the internet: not loopback, private, link-local (cloud metadata), shared,
    reserved or multicast; an IPv4 address written as IPv6 is judged as itself."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def fetch(url: str, limit: int, timeout: float, allowed: Callable[[Address], bool] = public) -> bytes:
    """The body of `url` (after at most MAX_REDIRECTS redirects), at most `limit` bytes, within
    `timeout` seconds in all; FetchError otherwise."""
    import httpx

    deadline = time.monotonic() + timeout
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FetchError("only http:// and https:// URLs are fetched")
        if parts.username or parts.password:
            raise FetchError("a URL with credentials in it is not fetched")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise FetchError("the URL's port is not a number from 0 to 65535") from None
        address = _resolve(parts.hostname, port, allowed)
        host = f"[{address}]" if address.version == 6 else str(address)
        target = parts._replace(netloc=f"{host}:{port}").geturl()
        left = deadline - time.monotonic()
        try:
            with httpx.Client(timeout=max(left, 0.01), follow_redirects=False, trust_env=False) as client:
                with client.stream("GET", target, headers={"Host": parts.netloc.rpartition("@")[2]},
                                   extensions={"sni_hostname": parts.hostname}) as r:
                    if r.is_redirect and "location" in r.headers:
                        url = urljoin(url, r.headers["location"])
                        continue
                    if r.status_code != 200:
                        raise FetchError(f"the URL answered HTTP {r.status_code}")
                    if int(r.headers.get("content-length") or 0) > limit:
                        raise FetchError(f"the URL's body is over {limit} bytes")
                    body = bytearray()
                    for block in r.iter_bytes():
                        body += block
                        if len(body) > limit:
                            raise FetchError(f"the URL's body is over {limit} bytes")
                        if time.monotonic() > deadline:
                            raise FetchError(f"the URL took more than {timeout:g} s")
                    return bytes(body)
        except httpx.TimeoutException:
            raise FetchError(f"the URL took more than {timeout:g} s") from None
        except httpx.HTTPError as e:
            raise FetchError(f"the URL could not be fetched ({type(e).__name__})") from None
    raise FetchError(f"the URL redirected more than {MAX_REDIRECTS} times")


def _resolve(name: str, port: int, allowed: Callable[[Address], bool]) -> Address:
    """The address to connect to; every address the name has must be allowed."""
    try:
        found = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise FetchError(f"the URL's host {name!r} does not resolve") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in found]
    if not addresses or not all(allowed(a) for a in addresses):
        raise FetchError(f"the URL's host {name!r} is not a public address; such URLs are not fetched")
    return addresses[0]
