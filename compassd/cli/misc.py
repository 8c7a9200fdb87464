"""The commands that need no tracker: ``version``, ``completion`` and ``demo``."""

from __future__ import annotations

import json
import os
import sys

import click

from .. import __version__
from ..client import CompassError
from ..presentation import console as new_console
from ._tracker import EXIT_REFUSED


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def version(as_json: bool) -> None:
    """Print compassd's version and the protocol versions it speaks."""
    from ..protocol import SUPPORTED_VERSIONS

    if as_json:
        click.echo(json.dumps({"compassd": __version__,
                               "protocol": list(SUPPORTED_VERSIONS)}))
        return
    click.echo(f"compassd {__version__} (protocol {', '.join(map(str, SUPPORTED_VERSIONS))})")


@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]), required=False)
@click.pass_context
def completion(ctx: click.Context, shell: str | None) -> None:
    """Print the shell completion script for SHELL (default: from $SHELL).

    Enable it with, for bash: eval "$(compass completion bash)" in ~/.bashrc.
    """
    from click.shell_completion import get_completion_class

    if shell is None:
        shell = os.path.basename(os.environ.get("SHELL", "bash"))
    cls = get_completion_class(shell)
    if cls is None:
        raise click.UsageError(f"No completion for shell {shell!r}; use bash, zsh or fish.")
    root = ctx.find_root().command  # the compass group this command was called through
    click.echo(cls(root, {}, "compass", "_COMPASS_COMPLETE").source())


@click.command()
@click.option("--samples", default=200, show_default=True, type=click.IntRange(min=1),
              help="How many of the shipped samples to classify (at most 200).")
@click.option("--deadline", default=60.0, show_default=True,
              type=click.FloatRange(min=1), help="Seconds allowed for each step.")
def demo(samples: int, deadline: float) -> None:
    """Try compassd on this machine, no network and no board needed.

    Starts a compass-tracker and a compass-server with the ONNX backend on 127.0.0.1,
    requests the board, uploads a small handwritten-digit classifier shipped with
    compassd, runs it on held-out samples, prints the accuracy, then stops both daemons.
    """
    from ..demo import DemoError, load_samples, run_demo

    shipped = len(load_samples()[1])
    if samples > shipped:
        raise click.BadParameter(
            f"compassd ships {shipped} held-out samples for the demo, not {samples}: give"
            f" a number from 1 to {shipped}.", param_hint="--samples")
    try:
        run_demo(new_console(), samples=samples, deadline=deadline)
    except DemoError as e:
        click.echo(f"compass: {e}", err=True)
        sys.exit(EXIT_REFUSED)
    except CompassError as e:
        click.echo(f"compass: the demo failed: {e}", err=True)
        sys.exit(EXIT_REFUSED)

