"""Which tenant a request belongs to: the ``X-Scope-OrgID`` convention of Loki, Tempo and Mimir."""

from __future__ import annotations

import re

DEFAULT_TENANT = "default"
HEADER = "X-Scope-OrgID"
# Loki's rules: up to 150 bytes of letters, digits and ! - _ . * ' ( ); not "." or "..".
_TENANT_RE = re.compile(r"^[A-Za-z0-9!\-_.*'()]{1,150}$")


class TenantError(ValueError):
    """The header names no valid tenant; the message is safe to show to the client."""


def tenant_from_header(value: str | None) -> str:
    """The tenant named by an ``X-Scope-OrgID`` value (HTTP header or gRPC metadata); absent means default."""
    raw = (value or "").strip()
    if not raw:
        return DEFAULT_TENANT
    if not _TENANT_RE.match(raw) or raw in (".", ".."):
        raise TenantError("invalid X-Scope-OrgID: use up to 150 letters, digits or !-_.*'()")
    return raw
