"""The ``compass`` command: run models on shared boards, look at and administer a tracker.

Exit codes: 0 success; 1 the tracker or board refused or failed (one sentence on stderr);
2 a usage error; 3 the tracker cannot be reached; 4 ``--check`` found an output that does
not match; 130 interrupted (Ctrl-C).

Data goes to stdout (tables, or JSON with ``--json``); what happens along the way
(queue position, upload progress) goes to stderr, so scripts can pipe stdout.

This module holds the root group, its global options and the entry point; each group of
commands has a module of its own: L{status} (status, devices), L{admin} (drain, undrain,
cancel, kick, token), L{accounting} (usage, history), L{models} (run, bench, with the
files they read in L{arrays}) and L{misc} (version, completion, demo). How results are
shown is shared with the demo in L{compassd.presentation}.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from . import accounting, admin, misc, models, status
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


class _Compass(click.Group):
    """The root group: its options (L{GLOBAL_OPTIONS}) may also follow the subcommand,
    as in ``compass status --tracker H:P --json``; they are moved before it, unless the
    subcommand has an option of the same name."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _globals_first(self, ctx, list(args)))


def _takes_value(option: click.Option) -> bool:
    return not option.is_flag and option.nargs == 1


def _globals_first(group: click.Group, ctx: click.Context, args: list[str]) -> list[str]:
    """C{args} with the group's options that follow the subcommand moved before it."""
    options = {name: param for param in group.params if isinstance(param, click.Option)
               for name in param.opts}
    i = 0
    while i < len(args):  # the group's own options, up to the subcommand's name
        name = args[i].partition("=")[0]
        if name not in options:
            break
        i += 2 if _takes_value(options[name]) and "=" not in args[i] else 1
    if i >= len(args) or args[i].startswith("-"):
        return args
    command = group.get_command(ctx, args[i])
    if command is None:
        return args
    own = {name for param in command.params for name in getattr(param, "opts", [])}
    before, after, rest = args[:i + 1], [], args[i + 1:]
    j = 0
    while j < len(rest):
        name = rest[j].partition("=")[0]
        if rest[j] == "--":
            after += rest[j:]
            break
        option = options.get(name)
        if option is None or name in own or name in ("-h", "--help"):
            after.append(rest[j])
            j += 1
            continue
        width = 2 if _takes_value(option) and "=" not in rest[j] else 1
        before[i:i] = rest[j:j + width]
        i += width
        j += width
    return before + after


@click.group(cls=_Compass, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=EXIT_CODES)
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
    maintenance with `compass drain DEVICE`. Where the board time went: `compass usage`
    and `compass history`. Shell completion: `compass completion`.
    """
    if cert_key is not None and cert is None:
        raise click.BadParameter("--cert-key needs --cert, the certificate it belongs to.",
                                 param_hint="--cert-key")
    ctx.obj = {"tracker": tracker, "token": token, "user": user,
               "tls": {"tls": tls, "ca": ca, "cert": cert, "key": cert_key}}


for _command in (status.status, status.devices, admin.drain, admin.undrain, admin.cancel,
                 admin.kick, admin.token, accounting.usage, accounting.history,
                 models.run_command, models.bench, misc.version, misc.completion, misc.demo):
    main.add_command(_command)


def run(args: list[str] | None = None) -> None:
    """The C{compass} command. Click's own standalone mode turns Ctrl-C into "Aborted!"
    and status 1; here it is C{compass: interrupted} and status 130, as documented."""
    try:
        code = main.main(args, prog_name="compass", standalone_mode=False)
    except KeyboardInterrupt:
        _interrupted()
    except click.exceptions.Abort as e:
        if isinstance(e.__cause__ or e.__context__, KeyboardInterrupt):
            _interrupted()
        click.echo("compass: aborted", err=True)
        sys.exit(EXIT_REFUSED)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except BrokenPipeError:
        # the reader of stdout went away (| head): nothing more can be said there
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_REFUSED)
    sys.exit(code if isinstance(code, int) else 0)


def _interrupted() -> NoReturn:
    click.echo("compass: interrupted", err=True)
    sys.exit(EXIT_INTERRUPTED)
