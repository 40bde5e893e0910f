"""Shared pytest configuration.

Hypothesis runs under the "ci" profile by default: no per-example deadline (the machines are
shared and timings are noisy) and a modest number of examples so the whole suite stays fast.
Select another profile with ``HYPOTHESIS_PROFILE=dev`` (more examples) or register your own.
"""
import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=300)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
