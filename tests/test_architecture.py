"""The package's layering, checked: docs/architecture.md says it in words.

Every import of a compassd module, anywhere in the package (at the top of a module, in a
function, or only for type checking), is read with L{ast} and must go down the layers, or
sideways along an edge listed here:

    programs (CLI, demo, the daemons' taps)  ->  services  ->  core  ->  shared pieces

A new module needs a line in L{LAYERS}; a new sideways edge needs a line in L{SIDEWAYS}
and a reason in docs/architecture.md.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import compassd

PACKAGE = Path(compassd.__file__).parent

PROGRAMS, SERVICES, CORE, SHARED = "programs", "services", "core", "shared"
RANK = {PROGRAMS: 3, SERVICES: 2, CORE: 1, SHARED: 0}

LAYERS = {
    # programs: what a person or twistd runs
    "compassd.cli": PROGRAMS,
    "compassd.demo": PROGRAMS,
    "compassd.presentation": PROGRAMS,
    "compassd.daemon_options": PROGRAMS,
    "compassd.tracker.tap": PROGRAMS,
    "compassd.server.tap": PROGRAMS,
    "compassd.proxy.tap": PROGRAMS,
    "compassd.executor.__main__": PROGRAMS,
    "compassd.executor._start": PROGRAMS,  # how a board server starts __main__
    # services: the daemons' Twisted shells and the client library
    "compassd.tracker": SERVICES,
    "compassd.server": SERVICES,
    "compassd.proxy": SERVICES,
    "compassd.client": SERVICES,
    "compassd.executor": SERVICES,
    "compassd._aipu": SERVICES,  # the executor's C binding
    # the scheduling core: decisions only, no Twisted
    "compassd.tracker.scheduler": CORE,
    "compassd.tracker.scheduler_state": CORE,
    "compassd.tracker.records": CORE,
    "compassd.tracker.fairqueue": CORE,
    "compassd.tracker.usage": CORE,
    "compassd.tracker.explain": CORE,
    "compassd.tracker.tvmlimits": CORE,
    "compassd.tracker.restart": CORE,
    "compassd.tracker.reconcile": CORE,
    "compassd.ratelimit": CORE,
    # shared pieces: the protocol and what every layer may use
    "compassd": SHARED,  # compassd/__init__.py: the version
    "compassd.errors": SHARED,
    "compassd.access": SHARED,
    "compassd.protocol": SHARED,
    "compassd.addresses": SHARED,
    "compassd.tensors": SHARED,
    "compassd.tls": SHARED,
    "compassd.hashing": SHARED,
    "compassd.listening": SHARED,
    "compassd.systemd": SHARED,
    "compassd.metrics": SHARED,
    "compassd._twisted_private": SHARED,
    "compassd.hangup": SHARED,  # SIGHUP reloads a daemon's files
    "compassd.lifeline": SHARED,  # a child dies with its parent; standard library only
}
"""The layer of each module, by the longest prefix that names it."""

GROUPS = {"compassd._aipu": "compassd.executor",
          "compassd.executor._start": "compassd.executor.__main__"}
"""Modules that belong to another module's group (see L{group})."""

SIDEWAYS = {
    ("compassd.server", "compassd.executor"): "a board server runs its executor process",
    ("compassd.cli", "compassd.demo"): "compass demo runs the demo",
    ("compassd.cli", "compassd.presentation"): "the CLI shows results",
    ("compassd.demo", "compassd.presentation"): "the demo shows results",
    ("compassd.server.tap", "compassd.daemon_options"): "options the taps share",
    ("compassd.proxy.tap", "compassd.daemon_options"): "options the taps share",
    ("compassd.tracker.tap", "compassd.daemon_options"): "options the taps share",
}
"""Imports allowed between two groups of the same layer."""

DOWN_FROM_TAPS = {
    "compassd.tracker.tap": "compassd.tracker",
    "compassd.server.tap": "compassd.server",
    "compassd.proxy.tap": "compassd.proxy",
    "compassd.executor.__main__": "compassd.executor",
}
"""A daemon's program uses its own daemon's services and no other's."""

CORE_MAY_IMPORT = {"compassd", "compassd.errors"}
"""The shared pieces the core may use: they import no Twisted."""

def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")) + sorted(PACKAGE.rglob("*.pyi")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found.setdefault(".".join(parts), path)
    return found


MODULES = modules()


def layer(module: str) -> str | None:
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in LAYERS:
            if prefix == "compassd" and module != "compassd":
                return None  # a module nobody placed yet
            return LAYERS[prefix]
    return None


def group(module: str) -> str:
    """The module's unit for sideways edges: the longest LAYERS prefix (a daemon's
    package, a tap, the CLI), or what GROUPS says."""
    if module in GROUPS:
        return GROUPS[module]
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in LAYERS:
            return prefix
    return module


def imports(module: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, compassd module) for every import in C{path}."""
    package = module if path.name.startswith("__init__") else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "compassd":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] != "compassd":
                continue
            for alias in node.names:  # `from . import x` may import a module x
                sub = f"{name}.{alias.name}"
                yield node.lineno, sub if sub in MODULES else name


def third_party(path: Path) -> Iterator[tuple[int, str]]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and not node.level:
            yield node.lineno, node.module or ""


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def allowed(source: str, target: str) -> bool:
    """Whether C{source} may import C{target} (both have a layer)."""
    here, there = layer(source), layer(target)
    assert here is not None and there is not None
    if group(source) == group(target) or here == there == SHARED:
        return True
    if here == CORE:
        return there == CORE or target in CORE_MAY_IMPORT
    if source in DOWN_FROM_TAPS and there == SERVICES:
        return within(target, DOWN_FROM_TAPS[source])
    if RANK[here] > RANK[there]:
        return True
    if here == there:
        return any(within(source, a) and within(target, b) for a, b in SIDEWAYS)
    return False


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(m for m in MODULES if layer(m) is None)
    assert unplaced == [], (
        f"{unplaced} have no layer: add them to LAYERS in tests/test_architecture.py"
        " and to docs/architecture.md")


def test_imports_go_down_the_layers_or_along_a_listed_edge() -> None:
    wrong = []
    for module, path in MODULES.items():
        if path.suffix != ".py" or layer(module) is None:
            continue
        for line, target in imports(module, path):
            if layer(target) is None:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {target} has no layer")
            elif not allowed(module, target):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module}"
                             f" ({layer(module)}) imports {target} ({layer(target)})")
    assert wrong == [], "imports against docs/architecture.md:\n" + "\n".join(wrong)


def test_the_core_imports_no_twisted_in_its_source() -> None:
    wrong = []
    for module, path in MODULES.items():
        if layer(module) != CORE:
            continue
        for line, name in third_party(path):
            if name.split(".")[0] in ("twisted", "zope"):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: imports {name}")
    assert wrong == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m) == CORE))
def test_the_core_imports_without_twisted(module: str) -> None:
    """Importing a core module in a fresh interpreter loads no Twisted module at all
    (nor, through a package's __init__, anything that does)."""
    check = (
        "import sys\n"
        "before = set(sys.modules)\n"  # a zope namespace .pth may load 'zope' at startup
        f"import {module}\n"
        "print(' '.join(sorted(m for m in set(sys.modules) - before"
        " if m.split('.')[0] in ('twisted', 'zope'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                          timeout=60, check=True, cwd=PACKAGE.parent)
    assert done.stdout.split() == [], f"importing {module} loaded {done.stdout.strip()}"


# --- the checker itself: each rule catches what it should ----------------------------


@pytest.mark.parametrize(("source", "target"), [
    ("compassd.protocol.peer", "compassd.tracker.service"),  # shared -> services
    ("compassd.tracker.scheduler", "compassd.protocol.errors"),  # core -> Twisted's side
    ("compassd.tracker.records", "compassd.tracker.service"),  # core -> shell
    ("compassd.demo.runner", "compassd.cli"),  # the demo uses the CLI's internals
    ("compassd.tracker.service", "compassd.tracker.tap"),  # services -> programs
    ("compassd.client.session", "compassd.server.board"),  # a client reaches a daemon
    ("compassd.tracker.tap", "compassd.server.board"),  # a tap reaches another daemon
    ("compassd.proxy.connection", "compassd.tracker.service"),  # daemon -> daemon
])
def test_the_rule_refuses(source: str, target: str) -> None:
    assert not allowed(source, target)


@pytest.mark.parametrize(("source", "target"), [
    ("compassd.cli.admin", "compassd.tracker.access"),
    ("compassd.tracker.service", "compassd.tracker.scheduler"),
    ("compassd.tracker.scheduler", "compassd.errors"),
    ("compassd.tracker.scheduler", "compassd.tracker.fairqueue"),
    ("compassd.tracker.fairqueue", "compassd.tracker.usage"),
    ("compassd.protocol.peer", "compassd.listening"),
    ("compassd.server.board", "compassd.executor.handle"),
    ("compassd.tracker.tap", "compassd.tracker.service"),
])
def test_the_rule_allows(source: str, target: str) -> None:
    assert allowed(source, target)


# --- Twisted's private names: in one module only ---------------------------------------

PRIVATE_HOME = "compassd._twisted_private"

TWISTED_PRIVATE_ATTRIBUTES = {
    "_wireNameToPythonIdentifier", "_sendBoxCommand", "_wrapWithSerialization",
    "_unprocessed", "_tempDataBuffer", "_writeDisconnecting", "_writer",
    "_lostNotification", "_sslContextFactory", "_sddaemon", "_SystemdParser",
    "_sslverify", "_verifyCB", "_hostnameIsDnsName", "_hostnameASCII",
}
"""The private names compassd._twisted_private uses: nobody else may name them."""


def private_twisted_uses(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    twisted_names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "twisted":
            for alias in node.names:
                if alias.name.startswith("_"):
                    yield node.lineno, f"from {node.module} import {alias.name}"
                twisted_names.add(alias.asname or alias.name)
            if any(part.startswith("_") for part in (node.module or "").split(".")):
                yield node.lineno, f"from {node.module} import ..."
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "twisted":
                    twisted_names.add(alias.asname or alias.name.split(".")[0])
                    if any(part.startswith("_") for part in alias.name.split(".")):
                        yield node.lineno, f"import {alias.name}"
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Attribute):
            name = node.attr
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in twisted_names \
                    and name.startswith("_") and not name.startswith("__"):
                yield node.lineno, f"{owner.id}.{name}"
                continue
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = node.name
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            name = node.value
        if name in TWISTED_PRIVATE_ATTRIBUTES:
            yield node.lineno, name


def test_only_one_module_uses_twisteds_private_names() -> None:
    wrong = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {what}"
        for module, path in MODULES.items()
        if path.suffix == ".py" and module != PRIVATE_HOME
        for line, what in private_twisted_uses(path)
    ]
    assert wrong == [], (
        "Twisted's private names outside compassd/_twisted_private.py (move them there,"
        " with why and a test in tests/test_twisted_private.py):\n" + "\n".join(wrong))


def test_the_private_names_check_sees_the_home_module() -> None:
    found = {what for _, what in private_twisted_uses(MODULES[PRIVATE_HOME])}
    assert "amp._wireNameToPythonIdentifier" in found
    assert {"_sendBoxCommand", "_wrapWithSerialization", "_sslContextFactory"} <= found
