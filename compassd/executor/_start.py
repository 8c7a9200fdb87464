"""Start an executor from exactly this copy of compassd: ``python -P .../_start.py ARGS``.

A board server runs this file by its path (L{compassd.executor.handle.executor_argv}),
not ``python -m compassd.executor``: with ``-m`` the child would import the first
``compassd`` on its path, which is the current directory's when the server was started
from a source tree (one without the compiled C binding, or of another version). Here the
package is loaded from the folder that holds this file, ``-P`` keeps the current directory
and this file's folder off ``sys.path``, and everything else (Twisted, numpy, the
backends) is imported as the server imports it.
"""

import importlib.util
import sys
from pathlib import Path


def _load_compassd() -> None:
    package = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location(
        "compassd", package / "__init__.py", submodule_search_locations=[str(package)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["compassd"] = module
    spec.loader.exec_module(module)


if __name__ == "__main__":
    _load_compassd()
    from compassd.lifeline import die_with_parent, parent_in

    # before anything heavy loads: an executor still starting dies with its server too
    if not die_with_parent(parent_in(sys.argv[1:])):
        print("executor: the board server that started it is gone; exiting", file=sys.stderr)
        raise SystemExit(0)
    from compassd.executor.__main__ import _exit, main

    _exit(main())
