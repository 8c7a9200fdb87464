"""Option values the daemons' twistd plugins share: the tracker to register with, the
address to advertise, and positive durations.

The parsing itself is in L{compassd.addresses}; this module only turns its ValueErrors
into the usage errors twistd prints, naming the option.
"""

from __future__ import annotations

from twisted.python import usage

from .addresses import client_endpoint, dial_address, split_trackers


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


def check_tracker_and_advertise(options: usage.Options, several: bool = False) -> None:
    """Turn C{--tracker} into C{tracker-endpoint} and check C{--advertise}, or refuse
    them with a usage error that names the option (compass-server and compass-proxy).

    With C{several} (compass-server), C{--tracker} may list a standby pair separated by
    commas; C{tracker-endpoint} is then their endpoint strings, joined by commas."""
    text = options["tracker"]
    if several and "," in text:
        try:
            options["tracker-endpoint"] = ",".join(
                client_endpoint(item) for item in split_trackers(text))
        except ValueError as e:
            raise usage.UsageError(f"--tracker: {e}") from e
    elif "," in text:
        raise usage.UsageError(
            f"--tracker {text}: this daemon registers with one tracker; give the address"
            " of the active tracker of a standby pair (a standby would redirect it).")
    else:
        options["tracker-endpoint"] = endpoint_option(options, "tracker")
    if options["advertise"]:
        try:
            options["advertise"] = dial_address(options["advertise"])
        except ValueError as e:
            raise usage.UsageError(f"--advertise: {e}") from e
