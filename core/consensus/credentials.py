"""Which API key a serving node sends to which verifier (issue 20 §6).

One key for every verifier let each verifier's operator call every other verifier, and the key went
over plain `http://` too. Keys are now per verifier: `SPECGUARD_VERIFIER_API_KEYS=FILE`, one
`URL KEY` per line (`#` comments), and a verifier gets only the key of its own URL (scheme, host
and port must match). A key is never sent over plain `http://` to a host other than loopback unless
the operator sets `SPECGUARD_VERIFIER_KEYS_OVER_HTTP=1` (e.g. inside a private network). The old
single key (`SPECGUARD_VERIFIER_API_KEY`) is refused with a message saying what to use instead.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import ConfigError

KEYS_FILE_ENV = "SPECGUARD_VERIFIER_API_KEYS"
LEGACY_KEY_ENV = "SPECGUARD_VERIFIER_API_KEY"
PLAINTEXT_ENV = "SPECGUARD_VERIFIER_KEYS_OVER_HTTP"


def origin(url: str) -> str:
    """scheme://host:port of `url` (default ports filled in, no user info), what a key is bound to."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower(), 0)
        host = (parts.hostname or "").lower()
    except ValueError as exc:
        raise ConfigError("not a verifier URL", field="verifier", got=url[:100]) from exc
    if not host:
        raise ConfigError("not a verifier URL", field="verifier", got=url[:100], expected="http(s)://host:port")
    shown = f"[{host}]" if ":" in host else host
    return f"{parts.scheme.lower()}://{shown}:{port}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_keys(path: str) -> dict[str, str]:
    """{origin: key} from a keys file (`URL KEY` per line)."""
    try:
        lines = Path(path).read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("cannot read the verifier API keys file", field=KEYS_FILE_ENV, got=str(exc)[:200]) from exc
    keys: dict[str, str] = {}
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        url, _, key = line.partition(" ")
        key = key.strip()
        if len(key) < 8 or any(c.isspace() for c in key):
            raise ConfigError("each line must be 'URL KEY' with a key of at least 8 characters and no spaces",
                              field=f"{KEYS_FILE_ENV} line {n}", got=f"{len(key)} characters")
        where = origin(url)
        if where in keys:
            raise ConfigError("a verifier URL is listed twice", field=f"{KEYS_FILE_ENV} line {n}", got=where)
        keys[where] = key
    return keys


def verifier_headers(url: str, environ: dict[str, str] | None = None) -> dict[str, str] | None:
    """The `Authorization` header for verifier `url`, None when it has no key; ConfigError when the
    configuration would send one key everywhere or a key in plaintext."""
    env = os.environ if environ is None else environ
    if env.get(LEGACY_KEY_ENV):
        raise ConfigError(f"{LEGACY_KEY_ENV} sends one key to every verifier; give each verifier its own key in "
                          f"{KEYS_FILE_ENV}=FILE ('URL KEY' per line)", field=LEGACY_KEY_ENV, got="set",
                          expected=KEYS_FILE_ENV)
    path = env.get(KEYS_FILE_ENV)
    if not path:
        return None
    where = origin(url)
    key = load_keys(path).get(where)
    if key is None:
        return None
    scheme, host = where.split("://", 1)[0], urlsplit(where).hostname or ""
    if scheme != "https" and not _is_loopback(host) and env.get(PLAINTEXT_ENV) != "1":
        raise ConfigError("refusing to send a verifier API key over plain http: use https, or set "
                          f"{PLAINTEXT_ENV}=1 if this network is private", field="verifier", got=where,
                          expected="https://...")
    return {"Authorization": f"Bearer {key}"}
