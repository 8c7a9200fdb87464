"""The C extension needs setup.py; all other metadata lives in setup.cfg.

The extension (``compassd._aipu``, the binding of the NPU driver) is optional: without a
C compiler or Python's headers the install still succeeds with a warning, everything but
the ``aipu`` backend works, and the ``aipu`` backend says what to install. Builds that
must have it (CI, the Debian package) set COMPASS_BUILD_AIPU=required.
"""

import os

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("compassd._aipu", ["compassd/_aipu.c"], libraries=["dl"],
                  optional=os.environ.get("COMPASS_BUILD_AIPU") != "required"),
    ],
)
