"""How often one source address may make compass-proxy ask the tracker about a ticket.

Every ``open-session`` a client sends the proxy costs the tracker one ``check-ticket``
call, before anything proves the caller holds a grant. Without a bound, one peer could
make the proxy hammer the tracker (issue 14 saw 200 bogus opens in 0.4 s). L{OpenLimit}
gives each source address a token bucket: C{burst} opens at once, then C{rate} per
second; an open past it is refused without asking the tracker.

The table of addresses is bounded (C{max_addresses}): when it is full, the address
heard from least recently is forgotten to make room. Forgetting an address can only
give it a fresh bucket, which costs the tracker at most C{burst} more checks per
eviction; an address that sends on and on stays at the recent end and keeps its empty
bucket. IPv6 sources count by their /64 network (one host usually holds all of one).

No Twisted and no clock here: the shell passes the time (C{reactor.seconds()}) and the
peer's host, and turns a refusal into a sentence.
"""

from __future__ import annotations

import collections
import ipaddress

import attrs

DEFAULT_RATE = 5.0
"""Session opens per second one address may sustain by default."""
DEFAULT_BURST = 20
"""Session opens one address may make at once by default (a lab behind one NAT
address starts several sessions together)."""
DEFAULT_MAX_ADDRESSES = 4096
"""Addresses whose buckets are kept at most."""


def source_key(host: str) -> str:
    """What counts as one source: an IPv4 address, the /64 network of an IPv6 address
    (an IPv4-mapped one counts as its IPv4 address), anything else (a Unix socket's
    path, a name) as it is."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@attrs.define
class TokenBucket:
    """C{tokens} of C{burst}, last brought up to date at C{updated}; C{rate} come back
    per second."""

    rate: float
    burst: float
    tokens: float
    updated: float

    def refill(self, now: float) -> None:
        """Add what came back since C{updated} (a clock that went back adds nothing)."""
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def take(self, now: float) -> float:
        """Take one token: 0.0 if there was one, else the seconds until there is (and
        nothing is taken)."""
        self.refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def full(self, now: float) -> bool:
        """Whether it holds C{burst} tokens at C{now}: then it says nothing a fresh
        bucket would not."""
        self.refill(now)
        return self.tokens >= self.burst


@attrs.define
class Verdict:
    """What L{OpenLimit.take} decided for one open."""

    allowed: bool
    source: str
    """The source it was counted against (L{source_key})."""
    retry_after: float = 0.0
    """Seconds until this source may open again (0 when allowed)."""
    first_refusal: bool = False
    """Whether this is the first refusal since the source was last allowed: the shell
    logs that one only, so a flood of refusals does not flood the log."""


@attrs.define
class OpenLimit:
    """A token bucket per source address, at most C{max_addresses} of them."""

    rate: float = DEFAULT_RATE
    burst: int = DEFAULT_BURST
    max_addresses: int = DEFAULT_MAX_ADDRESSES
    _buckets: collections.OrderedDict[str, TokenBucket] = attrs.field(
        factory=collections.OrderedDict)
    """Per source, least recently heard from first."""
    _refusing: set[str] = attrs.field(factory=set)
    """Sources refused since they were last allowed."""
    refused: int = 0
    """Opens refused so far."""
    evicted: int = 0
    """Sources forgotten to make room while their bucket was not full."""

    def __attrs_post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError(f"The rate must be positive, not {self.rate!r}.")
        if self.burst < 1:
            raise ValueError(f"The burst must be 1 or more, not {self.burst!r}.")
        if self.max_addresses < 1:
            raise ValueError(f"max_addresses must be 1 or more, not {self.max_addresses!r}.")

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, host: str, now: float) -> Verdict:
        """Count one session open from C{host} at time C{now}."""
        source = source_key(host)
        bucket = self._buckets.get(source)
        if bucket is None:
            self._make_room(now)
            bucket = TokenBucket(self.rate, float(self.burst), float(self.burst), now)
            self._buckets[source] = bucket
        else:
            self._buckets.move_to_end(source)
        wait = bucket.take(now)
        if wait == 0.0:
            self._refusing.discard(source)
            return Verdict(True, source)
        self.refused += 1
        first = source not in self._refusing
        self._refusing.add(source)
        return Verdict(False, source, wait, first)

    def _make_room(self, now: float) -> None:
        """Forget sources until one more fits: the least recently heard from first."""
        while len(self._buckets) >= self.max_addresses:
            source, bucket = self._buckets.popitem(last=False)
            self._refusing.discard(source)
            if not bucket.full(now):
                self.evicted += 1
