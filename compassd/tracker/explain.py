"""Why a waiting request is where it is, in a sentence for the person waiting.

Each request is explained by the one just ahead of it in queue order: a higher priority
("behind bob: priority 5 > 1"), less board time used lately per share ("behind carol:
they used 0.2 board-hours lately, you used 3.1"), the turn (with a half-life of 0), or
arrival. A request for a key no device serves is refused with L{no_device}'s sentence.
Plain functions of the order and the usage; no Twisted, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence

from .records import Request

NEXT = "next in line"

KEYS_NAMED = 20
"""At most this many keys are named when a request for an unknown key is refused."""


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f}"


def reasons(
    order: Sequence[Request],
    usage: Callable[[str], float] | None,
    share: Callable[[str], float],
    only: Container[str] | None = None,
) -> dict[str, str]:
    """A sentence for each request of C{order} (one key's waiting requests in queue
    order), or only for those whose ids are in C{only}. C{usage} gives a user's decayed
    board-seconds (None: users take turns)."""
    result: dict[str, str] = {}
    previous: Request | None = None
    earlier: dict[tuple[str, int], str] = {}  # (user, priority) -> their first request
    for request in order:
        mine = earlier.setdefault((request.user, request.priority), request.id)
        if only is not None and request.id not in only:
            pass
        elif previous is None:
            result[request.id] = NEXT
        elif mine != request.id and previous.user != request.user:
            result[request.id] = (
                f"behind {previous.user}: users take one turn each, and your {mine} is"
                " ahead"
            )
        else:
            result[request.id] = why(request, previous, usage, share)
        previous = request
    return result


def why(
    request: Request,
    ahead: Request,
    usage: Callable[[str], float] | None,
    share: Callable[[str], float],
) -> str:
    """Why C{request} waits behind C{ahead}."""
    if ahead.priority != request.priority:
        return f"behind {ahead.user}: priority {ahead.priority} > {request.priority}"
    if ahead.user == request.user:
        return f"behind your own earlier request {ahead.id}"
    if usage is None:
        return f"behind {ahead.user}: their turn (users take turns; you were granted since)"
    theirs, mine = usage(ahead.user), usage(request.user)
    text = (
        f"behind {ahead.user}: they used {_hours(theirs)} board-hours lately,"
        f" you used {_hours(mine)}"
    )
    their_share, my_share = share(ahead.user), share(request.user)
    if their_share != my_share:
        text += f" (shares {their_share:g} and {my_share:g})"
    elif theirs == mine:
        text += "; they asked first"
    return text


def no_device(key: str, served: Sequence[str]) -> str:
    """Why a request for C{key} is refused: no device of it is registered (online, or
    offline but not yet forgotten); C{served} are the keys that have devices."""
    if served:
        named = ", ".join(served[:KEYS_NAMED])
        if len(served) > KEYS_NAMED:
            named += f" and {len(served) - KEYS_NAMED} more"
        known = f"The keys with devices are: {named}."
    else:
        known = "No device is registered at this tracker yet."
    return (
        f"No device serves key {key!r} at this tracker, and none has lately. {known} Check"
        " the key (`compass status` lists them), or ask to wait until a board of this key"
        " registers (`compass run --wait-for-board`, or wait_for_board=True in the client)."
    )
