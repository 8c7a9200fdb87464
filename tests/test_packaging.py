"""Licence and package hygiene that can be checked without building the packages
(`.ci/systemd-test` builds them and runs lintian): LICENSE is the Apache-2.0 text that
setup.cfg declares, debian/copyright is machine-readable (DEP-5) with a text for every
licence it names, and the man page lists every `compass` command."""

from __future__ import annotations

import re

from tests.helpers import ROOT


def test_license_is_the_apache_2_text_setup_cfg_declares() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX" in text
    assert re.search(r"^license = Apache-2\.0$", (ROOT / "setup.cfg").read_text(), re.M)


def _paragraphs(text: str) -> list[dict[str, str]]:
    result = []
    for block in re.split(r"\n\s*\n", text.strip()):
        fields: dict[str, str] = {}
        name = ""
        for line in block.splitlines():
            if line[:1] in (" ", "\t"):
                fields[name] += "\n" + line
            else:
                name, _, value = line.partition(":")
                fields[name] = value.strip()
        result.append(fields)
    return result


def test_debian_copyright_is_dep5_with_a_text_for_every_licence() -> None:
    paragraphs = _paragraphs((ROOT / "debian" / "copyright").read_text(encoding="utf-8"))
    header, *rest = paragraphs
    assert header["Format"] == \
        "https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
    files = [p for p in rest if "Files" in p]
    standalone = {p["License"].split("\n")[0]: p["License"] for p in rest if "Files" not in p}
    assert files[0]["Files"] == "*" and files[0]["License"] == "Apache-2.0"
    for paragraph in files:
        assert paragraph.get("Copyright"), paragraph
        name = paragraph["License"].split("\n")[0]
        assert name in standalone and len(standalone[name].splitlines()) > 5, name
    for path in ("compassd/demo/samples.npz", "compassd/demo/digits.onnx"):
        assert any(path in p["Files"] for p in files), path


def test_the_man_page_lists_every_compass_command() -> None:
    from compassd.cli import main

    page = (ROOT / "debian" / "compass.1").read_text(encoding="utf-8")
    commands = page[page.index(".SH COMMANDS"):page.index(".SH OPTIONS")]
    listed = set(re.findall(r"^\.TP\n\.B (\S+)$", commands, re.M))
    assert listed == set(main.commands)
    assert (ROOT / "debian" / "python3-compassd.manpages").read_text().split() == [
        "debian/compass.1"]
