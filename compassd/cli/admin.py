"""Commands that change the tracker's state: ``drain``, ``undrain``, ``cancel``, ``kick``,
and ``token``, which makes a new token and its tokens-file line."""

from __future__ import annotations

import json
from collections.abc import Callable

import click

from ..client import Tracker
from ._tracker import with_tracker


def _admin(name: str, action: Callable[[Tracker, str], None], done: str, help_text: str,
           argument: str) -> click.Command:
    @click.command(name=name, help=help_text)
    @click.argument(argument)
    @click.pass_context
    def command(ctx: click.Context, **kwargs: str) -> None:
        target = kwargs[argument.lower()]
        with_tracker(ctx, lambda t: action(t, target))
        click.echo(done.format(target))

    return command


drain = _admin(
    "drain", lambda t, d: t.drain(d), "{} is draining: it finishes its lease, then takes no"
    " more.", "Admin: let DEVICE finish its current lease, then grant it no more.", "DEVICE")
undrain = _admin("undrain", lambda t, d: t.undrain(d), "{} is back in service.",
                 "Admin: put a drained DEVICE back into service.", "DEVICE")
cancel = _admin("cancel", lambda t, r: t.cancel(r), "Request {} is cancelled.",
                "Cancel a waiting REQUEST (yours; an admin may cancel anyone's).", "REQUEST")
kick = _admin("kick", lambda t, lease: t.kick(lease), "Lease {} is ended.",
              "Admin: end LEASE now; its holder is told it was kicked.", "LEASE")


@click.command()
@click.argument("user")
@click.option("--roles", default="client", show_default=True,
              help="Comma-separated roles: client, board, admin.")
@click.option("--keys", default="*", show_default=True,
              help="Comma-separated patterns of the device keys USER may request.")
@click.option("--max-priority", type=click.IntRange(-1_000_000, 1_000_000), default=None,
              help="The highest priority USER may request (default: 1 for clients, no"
              " cap for admins); above it a request is refused, naming the cap.")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"token": ..., "line": ...} for scripts.')
def token(user: str, roles: str, keys: str, max_priority: int | None,
          as_json: bool) -> None:
    """Make a new token for USER: prints the token (give it to the user) and the line to
    add to the tracker's tokens file (only its hash is stored there)."""
    from ..tracker.access import hash_token, new_token

    secret = new_token()
    line = f"{hash_token(secret)} user={user} roles={roles} keys={keys}"
    if max_priority is not None:
        line += f" max-priority={max_priority}"
    if as_json:
        click.echo(json.dumps({"token": secret, "line": line}))
        return
    click.echo(f"token: {secret}")
    click.echo(f"tokens file line: {line}")

