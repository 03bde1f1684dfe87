"""The two ways a load test fails: the user's arguments, or the target."""

from __future__ import annotations


class UsageError(Exception):
    """A bad argument, also one found out only by asking the server (unknown model, batch too big)."""


class TargetError(Exception):
    """The target misbehaved: unreachable, not ready, failing, or its metrics could not be read."""
