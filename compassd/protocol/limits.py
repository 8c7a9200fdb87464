"""Size limits on the values compassd accepts from the network.

AMP itself caps one value at 65,535 bytes; these limits are far below it so that a list
of them still fits in one value and so that a status table stays readable. A value over
a limit is refused with :class:`~compassd.protocol.errors.BadRequest` naming the limit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .errors import BadRequest

MAX_NAME = 64
"""Characters in a device key, a device name, a user name or a tag."""

MAX_TEXT = 256
"""Characters in a free-text field (device info, a reason, an address)."""

MAX_TAGS = 16
"""Tags on one device or one request."""

MAX_INFO_FIELDS = 16
"""Info fields a device reports."""

MAX_PAGE = 100
"""Entries in one page of a listing (each entry is bounded, so a page fits in 64 KiB)."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=-]*$")


def check_name(what: str, value: str) -> str:
    """Return C{value} if it is an acceptable name, else raise L{BadRequest} saying why."""
    if not value:
        raise BadRequest(f"The {what} is empty; give a name such as 'npu-x2'.")
    if len(value) > MAX_NAME:
        raise BadRequest(
            f"The {what} is {len(value)} characters long; the limit is {MAX_NAME}."
        )
    if not _NAME.match(value):
        raise BadRequest(
            f"The {what} {value!r} has characters other than letters, digits and ._:@+=-"
            " (or does not start with a letter or digit)."
        )
    return value


def check_text(what: str, value: str) -> str:
    """Return C{value} if it is at most L{MAX_TEXT} characters, else raise L{BadRequest}."""
    if len(value) > MAX_TEXT:
        raise BadRequest(
            f"The {what} is {len(value)} characters long; the limit is {MAX_TEXT}."
        )
    return value


def check_tags(what: str, tags: Iterable[str]) -> frozenset[str]:
    """Validate a collection of tags and return it as a frozen set."""
    tags = list(tags)
    if len(tags) > MAX_TAGS:
        raise BadRequest(f"The {what} has {len(tags)} tags; the limit is {MAX_TAGS}.")
    return frozenset(check_name("tag", tag) for tag in tags)


def check_seconds(what: str, value: float | None, *, allow_none: bool = True) -> float | None:
    """Validate a duration in seconds: positive and finite, or None where allowed."""
    if value is None:
        if allow_none:
            return None
        raise BadRequest(f"The {what} is required.")
    if not (value > 0 and value < 10 * 365 * 86400):
        raise BadRequest(f"The {what} must be a positive number of seconds, not {value!r}.")
    return float(value)
