"""Which Host and Origin headers the MCP endpoint accepts (DNS-rebinding protection).

A browser page on an attacker's domain can resolve that domain to 127.0.0.1 and
talk to a server on the user's machine; the Host header still names the
attacker's domain, and its requests carry the attacker's Origin. So /mcp answers
only requests addressed to a host it knows (421 otherwise) and, when a request
has an Origin, only origins it knows (403 otherwise). Requests without an Origin
(agents, command-line clients) pass the origin check, as the SDK decides.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from mcp.server.transport_security import TransportSecuritySettings

from app.config import Settings

# Every port of the local names: `make run`'s 127.0.0.1:8000, a tunnel, a test server.
LOCAL_HOSTS = ("127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost", "[::1]")
LOCAL_ORIGINS = (
    "http://127.0.0.1:*",
    "http://localhost:*",
    "http://[::1]:*",
    "http://127.0.0.1",
    "http://localhost",
    "http://[::1]",
)


def allowed_hosts(settings: Settings) -> list[str]:
    """MCP_ALLOWED_HOSTS, or the local names and PUBLIC_BASE_URL's host."""
    if settings.mcp_allowed_hosts:
        return list(settings.mcp_allowed_hosts)
    hosts = list(LOCAL_HOSTS)
    if settings.public_base_url:
        # The Host header a reverse proxy passes on for the public URL: its
        # host, with the port only when the URL names one.
        hosts.append(urlsplit(settings.public_base_url).netloc.lower())
    return hosts


def allowed_origins(settings: Settings) -> list[str]:
    """MCP_ALLOWED_ORIGINS, or the local origins and PUBLIC_BASE_URL's origin."""
    if settings.mcp_allowed_origins:
        return list(settings.mcp_allowed_origins)
    origins = list(LOCAL_ORIGINS)
    if settings.public_base_url:
        public = urlsplit(settings.public_base_url)
        origins.append(f"{public.scheme}://{public.netloc}".lower())
    return origins


def transport_security(settings: Settings) -> TransportSecuritySettings:
    """The SDK's transport security, always with DNS-rebinding protection on."""
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=allowed_hosts(settings),
        allowed_origins=allowed_origins(settings),
    )
