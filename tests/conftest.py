"""Shared fixtures and hypothesis profile for the default (fast) test run."""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

from tinymodels import TinyGPT

# Property tests run hundreds of small fp64 cases; no deadline because 2 shared CPU cores jitter.
settings.register_profile("default", max_examples=150, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """Tests compare bit patterns: pin threads so reductions are ordered the same on every run."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def tiny_gpt() -> TinyGPT:
    torch.manual_seed(0)
    return TinyGPT()
