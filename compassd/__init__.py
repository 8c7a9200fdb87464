"""compassd: share Zhouyi NPU boards (and CPU hosts) between developers and CI jobs.

The daemons (tracker, proxy, board server) are twistd plugins; the client library is
:mod:`compassd.client` and the command line is ``compass``.
"""

__version__ = "0.1.0"
