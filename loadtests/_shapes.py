"""Load shapes for the opt-in scenarios, and the open-loop arrival-rate schedules.

Locust runs the first LoadTestShape class it finds in any locustfile, so a shape class at module
level in `locustfile.py` would take over every plain `locust -f loadtests` run. These classes live
here instead (the leading underscore keeps Locust from importing this file as a locustfile) and
`locustfile.py` installs one when `--scenario` asks for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from locust import LoadTestShape


class StepRampShape(LoadTestShape):
    """(b) Closed-loop users in steps: start_users, then +step_users every step_s, up to max_users.

    Each step holds long enough to read a steady rate and latency off the charts; the knee is
    the step where the rate stops growing and the latency starts to.
    """

    def __init__(self, user_class, start_users: int, step_users: int, step_s: float, max_users: int):
        super().__init__()
        self.user_class = user_class
        self.start_users, self.step_users = start_users, step_users
        self.step_s, self.max_users = step_s, max_users

    @property
    def duration_s(self) -> float:
        steps = (self.max_users - self.start_users) // self.step_users + 1
        return steps * self.step_s

    def tick(self):
        step = int(self.get_run_time() // self.step_s)
        users = self.start_users + step * self.step_users
        if users > self.max_users:
            return None
        return users, max(users, 1), [self.user_class]


class OpenLoopShape(LoadTestShape):
    """(c), (d) One scheduler user, until its schedule is done; the arrivals come from the schedule."""

    use_common_options = True  # the schedule reads --run-time; -u and -r do not apply

    def __init__(self, user_class, schedule_done: Callable[[], bool]):
        super().__init__()
        self.user_class = user_class
        self.schedule_done = schedule_done

    def tick(self):
        if self.schedule_done():
            return None
        return 1, 1, [self.user_class]


@dataclass
class RatePhase:
    seconds: float | None  # None: for ever
    rate: float  # requests per second


def constant_rate(rate: float, seconds: float | None = None) -> list[RatePhase]:
    """(c) The same offered rate for the whole test."""
    return [RatePhase(seconds, rate)]


def spike(
    capacity_rate: float, factor: float, baseline: float, before_s: float, spike_s: float, after_s: float
) -> list[RatePhase]:
    """(d) baseline x capacity, then factor x capacity for spike_s, then baseline again."""
    low = baseline * capacity_rate
    return [RatePhase(before_s, low), RatePhase(spike_s, factor * capacity_rate), RatePhase(after_s, low)]


def rate_at(phases: list[RatePhase]) -> Callable[[float], float | None]:
    """A function from seconds since the start to the offered rate; None once the schedule ends."""

    def rate(t: float) -> float | None:
        start = 0.0
        for phase in phases:
            if phase.seconds is None or t < start + phase.seconds:
                return phase.rate
            start += phase.seconds
        return None

    return rate
