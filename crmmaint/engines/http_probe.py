"""HTTP endpoints asked from the machine crmmaint runs on (urllib, no client tool on a host).

``health.http`` (with ``from: runner``) and ``perf.report`` (latency percentiles of a host's
endpoints) make their GETs here, and ``cache.clear`` calls an application's cache endpoint
here (``send_from_runner``); requests made on the target host itself go through the host
adapter (``HostOS.http_status``, curl).
"""

from __future__ import annotations

import http.client
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crmmaint.errors import ProbeError

if TYPE_CHECKING:
    from crmmaint.inventory import Host

log = logging.getLogger(__name__)

__all__ = ["Answer", "ProbeError", "expand_url", "request_from_runner", "send_from_runner"]


def expand_url(url: str, host: Host) -> str:
    """``url`` with ``{host}`` (the host's inventory name) and ``{address}`` filled in, so one
    step can reach every host's endpoint."""
    return url.replace("{host}", host.name).replace("{address}", host.address)


def url_problem(url: str) -> str | None:
    """Why ``url`` may not be requested (a scheme other than http/https; a user name or
    password in it, which would be sent, logged, journaled and, misread as a host name,
    even looked up in DNS: credentials belong in a secret source), or ``None``. The text
    shows the URL without its credentials."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"url must start with http:// or https://, got {shown_url(url)!r}"
    if "@" in parts.netloc:
        return (
            f"url {shown_url(url)!r} carries a user name or password: they would be written to"
            " the journal; use an endpoint without them (or a token from a secret source)"
        )
    return None


def shown_url(url: str) -> str:
    """``url`` as messages show it: anything before an ``@`` in its host part blanked, and
    its query string cut (a key may travel in it)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"***@{host}" if "@" in parts.netloc else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))[:200]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def request_from_runner(url: str, timeout: float, follow: bool) -> tuple[int, float]:
    """GET ``url`` from this machine: ``(HTTP status, seconds until the answer was read)``.

    At most 64 KiB of the body is read; a 3xx is the answer unless ``follow``. Any status is
    an answer (a 503 included); ``timeout`` (seconds) bounds the connect and each read.
    Raises ``ProbeError`` when no answer came (refused, unreachable, timed out).
    """
    opener = urllib.request.build_opener(*([] if follow else [_NoRedirect()]))
    started = time.monotonic()
    try:
        with opener.open(url, timeout=timeout) as resp:
            resp.read(1 << 16)
            status = int(resp.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        # HTTPException: an answer that is not HTTP (a bad status line, broken chunks)
        reason = getattr(exc, "reason", exc) or type(exc).__name__
        raise ProbeError(f"request failed: {str(reason)[:200]}") from exc
    return status, time.monotonic() - started


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: its ``status``, the server's ``reason`` phrase (at most 200 characters)
    and the ``seconds`` until it was read."""

    status: int
    reason: str
    seconds: float


def send_from_runner(
    url: str,
    method: str,
    *,
    timeout: float,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    token: str | None = None,
) -> Answer:
    """Send one ``method`` request with ``headers`` and ``body`` to ``url`` from this machine;
    a redirect is never followed (a 3xx is the answer). Any status is an answer; at most
    64 KiB of the body is read; ``timeout`` (seconds) bounds the connect and each read.

    ``token`` goes in ``Authorization: Bearer``, a header never copied onto another request,
    and is blanked out (``[token]``) of the reason and of any error: a server or urllib may
    echo what it was sent. Raises ``ProbeError`` (``"METHOD URL failed: why"``, without the
    exception chained) when no answer came or urllib refused the URL or a header.
    """
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    if token is not None:
        request.add_unredirected_header("Authorization", "Bearer " + token)
    opener = urllib.request.build_opener(_NoRedirect())
    started = time.monotonic()
    try:
        with opener.open(request, timeout=timeout) as resp:
            resp.read(1 << 16)
            status, reason = int(resp.status), str(getattr(resp, "reason", "") or "")
    except urllib.error.HTTPError as exc:
        status, reason = exc.code, str(exc.reason or "")
        exc.close()
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        why = _redact(str(getattr(exc, "reason", exc) or type(exc).__name__), token)[:200]
        raise ProbeError(f"{method} {url} failed: {why}") from None
    seconds = time.monotonic() - started
    return Answer(status=status, reason=_redact(reason, token)[:200], seconds=seconds)


def _redact(text: str, secret: str | None) -> str:
    """``text`` with ``secret`` blanked out (a server may echo what it was sent)."""
    return text.replace(secret, "[token]") if secret else text
