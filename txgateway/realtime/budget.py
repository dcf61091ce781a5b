"""
A key's budget during a session: its spend when the session opened plus what the session has
cost so far, asked at every ``response.create`` (and at each usage report of a call's
sideband), so a session overshoots its key's budget by one response at most.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def key_budget(accountant: Any, spent_before: float,
               outcome: str = "the session is closed") -> Callable[[Any], str | None]:
    """Why a session's key may spend no more, or None; told the ``outcome`` of crossing."""

    def over(session: Any) -> str | None:
        limits = session.info.limits
        if limits is None or limits.budget_usd <= 0:
            return None
        spent = spent_before + accountant.session_cost(session)
        if spent < limits.budget_usd:
            return None
        return (f"Budget exceeded: ${spent:.2f} spent against this key's budget of "
                f"${limits.budget_usd:.2f}; {outcome}.")

    return over
