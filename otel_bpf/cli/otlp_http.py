"""The OTLP/HTTP exporter's transport, reading a bounded amount of any reply.

The SDK's HTTP exporter (1.45.2) reads a reply body whole, whatever length the collector
announces (``Content-Length: 1500000000`` is 1.5 GB in memory, and the export counted as
done).  :class:`BoundedReplySession` reads at most ``REPLY_MAX_BYTES`` of it (enough for an
``ExportMetricsServiceResponse`` with an error message) and fails the export beyond that.
"""

from __future__ import annotations

import time
from typing import Any

import requests

from otel_bpf.cli.config import REPLY_MAX_BYTES

_READ_CHUNK = 4096


class ReplyTooLarge(Exception):
    """A collector's reply body is larger than ``REPLY_MAX_BYTES``."""


class BoundedReplySession(requests.Session):
    """A requests session that reads at most ``REPLY_MAX_BYTES`` of any reply body, and
    stops reading when the request's timeout has passed (a collector that sends one byte
    at a time would otherwise restart the read timeout with every byte)."""

    def request(  # type: ignore[override]
        self, method: str, url: str, *args: Any, **kwargs: Any
    ) -> requests.Response:
        kwargs["stream"] = True
        timeout = kwargs.get("timeout")
        started = time.monotonic()
        response = super().request(method, url, *args, **kwargs)
        try:
            body = bytearray()
            while len(body) <= REPLY_MAX_BYTES:
                if isinstance(timeout, (int, float)) and time.monotonic() - started > timeout:
                    raise requests.ReadTimeout(f"reply not read within {timeout:g} s")
                chunk = response.raw.read(_READ_CHUNK, decode_content=True)
                if not chunk:
                    break
                body += chunk
        finally:
            # Closes the connection when the body was not read to its end.
            response.close()
        if len(body) > REPLY_MAX_BYTES:
            raise ReplyTooLarge(
                f"the collector's reply is larger than {REPLY_MAX_BYTES // 1024} KiB (not read)"
            )
        response._content = bytes(body)
        return response
