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
