"""docs/cli.md describes every command and option that ``compass --help`` shows."""

from __future__ import annotations

import re

import click

from compassd.cli import EXIT_CODES, main
from tests.helpers import ROOT

DOC = (ROOT / "docs" / "cli.md").read_text()


def sections() -> dict[str, str]:
    """The text under each ``## `compass NAME ...` `` heading, by every NAME it names."""
    found: dict[str, str] = {}
    parts = re.split(r"^## ", DOC, flags=re.M)
    for part in parts[1:]:
        heading, _, body = part.partition("\n")
        for name in re.findall(r"`compass ([a-z-]+)", heading):
            found[name] = found.get(name, "") + body
        if heading.strip() == "Global options":
            found[""] = body
    return found


def options(command: click.Command) -> list[str]:
    return [opt for param in command.params if isinstance(param, click.Option)
            for opt in param.opts + param.secondary_opts]


def test_every_command_has_a_section_and_every_section_a_command() -> None:
    assert isinstance(main, click.Group)
    documented = set(sections()) - {""}
    assert documented == set(main.commands)


def test_every_option_of_every_command_is_in_its_section() -> None:
    assert isinstance(main, click.Group)
    found = sections()
    missing = [f"compass {name} {opt}".replace("  ", " ")
               for name, command in [("", main), *main.commands.items()]
               for opt in options(command) + ["--help"] if f"`{opt}" not in found[name]
               and not (opt == "--help" and name)]
    assert not missing, f"docs/cli.md does not describe: {', '.join(missing)}"


def test_the_exit_codes_in_the_help_epilog_are_the_documented_ones() -> None:
    table = dict(re.findall(r"^\| (\d+) \| (.+?) \|$", DOC, flags=re.M))
    in_help = re.findall(r"(\d+) ([a-z-]+)", EXIT_CODES)
    assert sorted(table, key=int) == [code for code, _ in in_help]
    for code, first_word in in_help:
        assert table[code].lstrip("`-").startswith(first_word.lstrip("-")), code


def test_the_synopsis_of_run_names_every_option_the_issue_asks_for() -> None:
    synopsis = sections()["run"].splitlines()[1]
    for opt in ("--key", "-i", "-o", "--check", "--rtol", "--atol", "--frames",
                "--priority", "--lease", "--wait"):
        assert opt in synopsis
