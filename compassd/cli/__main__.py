"""``python -m compassd.cli``: the ``compass`` command."""

from . import run

run()
