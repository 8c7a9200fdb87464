"""The C extension needs setup.py; all other metadata lives in setup.cfg."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("compassd._aipu", ["compassd/_aipu.c"], libraries=["dl"]),
    ],
)
