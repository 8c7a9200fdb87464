"""Compile the fake NPU driver (``fake_aipudrv.c``) into a ``libaipudrv.so``.

``build_fake_driver()`` runs the system C compiler ``cc`` and caches the result by a hash of
the source, the flags and the compiler's version under ``tests/_build/`` (git-ignored), so
a test session compiles each variant once. Builds go to a temporary directory that is
renamed into place, so concurrent test processes never see a half-written library.

Each build directory holds ``libaipudrv.so.<version>`` (the SONAME is ``libaipudrv.so``)
and a ``libaipudrv.so`` symlink to it, like an installed driver: the binding reads the
release from the real file name.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "fake_aipudrv.c"
DEFAULT_OUT = HERE.parent / "_build"

# Emulated UMD release -> (FAKE_ABI value, full version string).
ABIS = {
    "6.1": (601, "6.1.0"),
    "6.0": (600, "6.0.0"),
    "5.11": (511, "5.11.0"),
    "5.10": (510, "5.10.0"),
    "5.9": (509, "5.9.0"),
}


def _compiler_id(cc: str) -> bytes:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"cannot run the C compiler {cc!r} to build the fake driver: {e}") from e


def build_fake_driver(
    out_dir: str | os.PathLike[str] | None = None,
    *,
    abi: str = "6.1",
    defines: Sequence[str] = (),
    cc: str = "cc",
) -> Path:
    """Build (or reuse) a fake driver and return the path of its ``libaipudrv.so`` link.

    ``abi`` picks the emulated release (a key of ``ABIS``); ``defines`` adds ``-D`` flags
    such as ``"FAKE_OMIT_FINISH_JOB"`` or ``"FAKE_NO_OPTIONAL"`` (see the source's header).
    """
    if abi not in ABIS:
        raise ValueError(f"unknown fake driver ABI {abi!r}; choose one of {sorted(ABIS)}")
    abi_code, version = ABIS[abi]
    out = Path(out_dir) if out_dir is not None else DEFAULT_OUT
    flags = [
        "-shared",
        "-fPIC",
        "-O2",
        "-g",
        "-pthread",
        "-Wall",
        "-Wextra",
        "-fvisibility=hidden",
        f"-DFAKE_ABI={abi_code}",
        *(f"-D{d}" for d in defines),
        "-Wl,-soname,libaipudrv.so",
    ]
    key = hashlib.sha256(
        SOURCE.read_bytes() + "\0".join(flags).encode() + _compiler_id(cc)
    ).hexdigest()[:20]
    final = out / f"fakedrv-{key}"
    link = final / "libaipudrv.so"
    if link.exists():
        return link

    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fakedrv-", dir=out))
    try:
        library = tmp / f"libaipudrv.so.{version}"
        result = subprocess.run(
            [cc, *flags, "-o", str(library), str(SOURCE)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"building the fake driver failed ({cc} exit {result.returncode}):\n{result.stderr}"
            )
        (tmp / "libaipudrv.so").symlink_to(library.name)
        try:
            tmp.rename(final)
        except OSError:
            if not link.exists():  # not a concurrent build that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return link
