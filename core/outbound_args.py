"""`--cacert FILE`: the CA(s) a command trusts for its outbound HTTPS calls.

Every command that calls out (log verify, audit run, consensus check, serve with verifiers or a
remote drafter, draft-serve's clients...) takes the option. It sets the process-wide trust of
`specguard.web.http` (`trust_cas`) before the command runs; each outbound client asks
`http.cacert_for(url)`. The environment (`SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`) is never read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from .web import http

F = TypeVar("F", bound=Callable[..., Any])

CACERT_HELP = ("PEM file of the CA certificate(s) to trust for this command's outbound HTTPS calls (a private CA); "
               "default: the system CAs. SSL_CERT_FILE is ignored.")


def _set_trust(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        http._ssl_context(value)  # an unreadable or non-PEM file fails here, naming --cacert
    http.trust_cas(http.TrustedCAs(default=value))
    return value


def cacert_option(func: F) -> F:
    """Add `--cacert FILE` to a click command (the value is applied, not passed to the command)."""
    return click.option("--cacert", type=click.Path(exists=True, dir_okay=False), default=None, expose_value=False,
                        callback=_set_trust, help=CACERT_HELP)(func)


__all__ = ["CACERT_HELP", "cacert_option"]
