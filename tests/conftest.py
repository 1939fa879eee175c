"""Test configuration shared by every tier."""

import os

from hypothesis import HealthCheck, settings

# The suite's profile: fuzz thoroughly but never let one property eat the time budget.
settings.register_profile(
    "zeromesh",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "zeromesh"))

# Fixtures that start real worker processes (see tests/meshkit.py).
# Brokers and their workers (see tests/brokerkit.py).
from brokerkit import bmesh  # noqa: E402, F401
from meshkit import mesh, short_tmp  # noqa: E402, F401

# Two hosts on one machine, for the tests that need a real network (tests/netkit.py).
from netkit import named_host, two_hosts  # noqa: E402, F401
