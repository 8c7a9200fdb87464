"""Settings shared by the whole suite."""

import os

from hypothesis import HealthCheck, settings

# CI machines have two slow cores: no per-example deadline there, and fewer examples
# unless asked for more (COMPASS_HYPOTHESIS_PROFILE=thorough).
settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=60
)
settings.register_profile(
    "thorough", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=1000
)
settings.load_profile(os.environ.get("COMPASS_HYPOTHESIS_PROFILE", "ci"))


# --- real daemons on loopback (tests/helpers.py) ------------------------------------

import pytest  # noqa: E402

from tests.helpers import daemon_log, start_twistd, stop  # noqa: E402


@pytest.fixture(autouse=True)
def _state_directory(tmp_path_factory, monkeypatch):
    """A tracker made in a test keeps its default store in a directory of the test's
    own, never the machine's /var/lib/compass-tracker."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path_factory.mktemp("state")))


@pytest.fixture
def tracker_args():
    """Extra ``compass-tracker`` options for the C{tracker} fixture; a module overrides
    this fixture to change them (for example a long --heartbeat-timeout)."""
    return ()


@pytest.fixture
def tracker(tracker_args):
    """A fresh, open ``twistd compass-tracker`` on 127.0.0.1: yields (host, port); it is
    stopped by PID afterwards, and its log is printed (pytest shows it on failure)."""
    proc, port = start_twistd("compass-tracker", *tracker_args)
    try:
        yield "127.0.0.1", port
    finally:
        stop(proc)
        print(daemon_log(proc))


@pytest.fixture(autouse=True, scope="session")
def _digest_memory(tmp_path_factory):
    """Clients remember local files' digests in a file (compassd.client._digests): here
    one of the run's own, never the user's, shared by the processes the tests start."""
    path = tmp_path_factory.mktemp("client") / "digests"
    before = os.environ.get("COMPASS_DIGESTS")
    os.environ["COMPASS_DIGESTS"] = str(path)
    try:
        yield path
    finally:
        if before is None:
            del os.environ["COMPASS_DIGESTS"]
        else:
            os.environ["COMPASS_DIGESTS"] = before
