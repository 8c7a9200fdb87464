"""The ``compass`` command: run models on shared boards, look at and administer a tracker.

Exit codes: 0 success; 1 the tracker or board refused or failed (one sentence on stderr);
2 a usage error; 3 the tracker cannot be reached; 4 ``--check`` found an output that does
not match; 130 interrupted (Ctrl-C).

Data goes to stdout (tables, or JSON with ``--json``); what happens along the way
(queue position, upload progress) goes to stderr, so scripts can pipe stdout.

This module holds the root group, its global options and the entry point; each group of
commands has a module of its own: L{status} (status, devices), L{admin} (drain, undrain,
cancel, kick, token), L{models} (run, bench, with the files they read in L{arrays}) and
L{misc} (version, completion, demo). How results are shown is shared with the demo in
L{compassd.presentation}.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from . import admin, misc, models, status
from ._tracker import (
    EXIT_CHECK_FAILED,
    EXIT_CODES,
    EXIT_INTERRUPTED,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    TRACKER_HELP,
)

__all__ = ["EXIT_CHECK_FAILED", "EXIT_CODES", "EXIT_INTERRUPTED", "EXIT_REFUSED",
           "EXIT_UNREACHABLE", "main", "run"]

F = TypeVar("F", bound=Callable[..., Any])



def _pem_file(flag: str, envvar: str, help_text: str) -> Callable[[F], F]:
    """An option naming a PEM file that must exist, defaulting to C{envvar}."""
    return click.option(flag, metavar="FILE", envvar=envvar,
                        type=click.Path(exists=True, dir_okay=False),
                        help=f"{help_text} Default: {envvar}.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES)
@click.option("--tracker", metavar="HOST:PORT", help=TRACKER_HELP)
@click.option(
    "--token",
    envvar="COMPASS_TOKEN",
    help="Your token, if the tracker has a tokens file. Default: COMPASS_TOKEN.",
)
@click.option("--user", envvar="COMPASS_USER", help="Name to show when no token is used.")
@click.option("--tls", is_flag=True, envvar="COMPASS_TLS",
              help="Connect with TLS, trusting the system's CAs (implied by --ca)."
              " Default: COMPASS_TLS.")
@_pem_file("--ca", "COMPASS_CA", "Connect with TLS and trust only the CA in this PEM file"
           " for the tracker's and the boards' certificates.")
@_pem_file("--cert", "COMPASS_CERT", "This client's certificate (PEM), for a tracker that"
           " asks for one.")
@_pem_file("--cert-key", "COMPASS_CERT_KEY", "The private key of --cert (PEM), if it is not"
           " in the --cert file.")
@click.pass_context
def main(ctx: click.Context, tracker: str | None, token: str | None, user: str | None,
         tls: bool, ca: str | None, cert: str | None, cert_key: str | None) -> None:
    """compass: share NPU boards through a compassd tracker.

    Try everything on this machine with `compass demo`. Run a model on a board of a
    pool with `compass run --key KEY MODEL -i INPUT.npy`, time it with `compass bench`.
    Look at who holds which board with `compass status`; admins drain boards for
    maintenance with `compass drain DEVICE`. Shell completion: `compass completion`.
    """
    if cert_key is not None and cert is None:
        raise click.BadParameter("--cert-key needs --cert, the certificate it belongs to.",
                                 param_hint="--cert-key")
    ctx.obj = {"tracker": tracker, "token": token, "user": user,
               "tls": {"tls": tls, "ca": ca, "cert": cert, "key": cert_key}}


for _command in (status.status, status.devices, admin.drain, admin.undrain, admin.cancel,
                 admin.kick, admin.token, models.run_command, models.bench, misc.version,
                 misc.completion, misc.demo):
    main.add_command(_command)


def run() -> None:
    """Entry point that never shows a traceback for an interrupted command."""
    try:
        main()
    except KeyboardInterrupt:
        click.echo("compass: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
