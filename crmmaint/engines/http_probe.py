"""HTTP endpoints asked from the machine crmmaint runs on (urllib, no client tool on a host).

``health.http`` (with ``from: runner``) and ``perf.report`` (latency percentiles of a host's
endpoints) both make their requests here; requests made on the target host itself go through
the host adapter (``HostOS.http_status``, curl).
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

from crmmaint.errors import CrmMaintError

if TYPE_CHECKING:
    from crmmaint.inventory import Host

log = logging.getLogger(__name__)


class ProbeError(CrmMaintError):
    """A request made from the runner failed: no answer (refused, unreachable, timed out)."""


def expand_url(url: str, host: Host) -> str:
    """``url`` with ``{host}`` (the host's inventory name) and ``{address}`` filled in, so one
    step can reach every host's endpoint."""
    return url.replace("{host}", host.name).replace("{address}", host.address)


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
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ProbeError(f"request failed: {reason}") from exc
    return status, time.monotonic() - started
