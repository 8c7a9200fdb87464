"""``compass-proxy``: boards behind NAT dial out to it, clients reach them through it.

- :mod:`compassd.proxy.pairing`: which boards are here, which client waits for which
  board (no I/O).
- :mod:`compassd.proxy.relay`: two connections joined with backpressure both ways.
- :mod:`compassd.proxy.connection`: every connection the proxy accepts or opens.
- :mod:`compassd.proxy.service` and :mod:`compassd.proxy.tap`: the daemon.

``docs/proxy.md`` describes the design.
"""

from .pairing import Channel, Pairing
from .relay import Relay, tune_keepalive
from .service import ProxyService

__all__ = ["Channel", "Pairing", "ProxyService", "Relay", "tune_keepalive"]
