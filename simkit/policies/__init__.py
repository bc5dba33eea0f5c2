"""Choices that are PLUGGED IN: batching, routing, offloading and parallel layouts.

Each kind has one registry here; adding a policy is one class plus one line.
"""

from __future__ import annotations

from simkit.policies.batching import BATCHING_POLICIES
from simkit.policies.routing import ROUTING_POLICIES

__all__ = ["BATCHING_POLICIES", "ROUTING_POLICIES"]
