"""Option values the daemons' twistd plugins share: the tracker to register with, the
address to advertise, and positive durations.

The parsing itself is in L{compassd.addresses}; this module only turns its ValueErrors
into the usage errors twistd prints, naming the option.
"""

from __future__ import annotations

from twisted.python import usage

from .addresses import client_endpoint, dial_address


def positive(text: str) -> float:
    """A number greater than zero (an option's coerce function)."""
    value = float(text)
    if not value > 0:
        raise ValueError(f"{text} is not a positive number")
    return value


def endpoint_option(options: usage.Options, name: str) -> str:
    """The Twisted client endpoint string for the option C{--name} (C{HOST:PORT} or an
    endpoint string), or a usage error that names the option."""
    try:
        return client_endpoint(options[name])
    except ValueError as e:
        raise usage.UsageError(f"--{name}: {e}") from e


def check_tracker_and_advertise(options: usage.Options) -> None:
    """Turn C{--tracker} into C{tracker-endpoint} and check C{--advertise}, or refuse
    them with a usage error that names the option (compass-server and compass-proxy)."""
    options["tracker-endpoint"] = endpoint_option(options, "tracker")
    if options["advertise"]:
        try:
            options["advertise"] = dial_address(options["advertise"])
        except ValueError as e:
            raise usage.UsageError(f"--advertise: {e}") from e
