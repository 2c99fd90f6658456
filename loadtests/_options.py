"""The load tests' options, in one table: locustfile.py declares them to Locust, and
`python -m servelab bench|sweep` declares the ones it passes on (servelab/bench/cli.py), with
the same names, types, defaults and help.

Standard library only: servelab loads this file by its path, and must never import Locust (in a
Jupyter kernel `import locust` hangs).
"""

from __future__ import annotations

from typing import Any, NamedTuple

SCENARIOS = ("steady", "ramp", "open", "spike")


class Option(NamedTuple):
    name: str  # the attribute: --offered-rate is options.offered_rate
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env_var(self) -> str:
        return "SERVELAB_" + self.name.upper()


# fmt: off
OPTIONS = (
    Option("scenario", str, "steady",
           "steady: -u closed-loop users; ramp: users in steps; open: Poisson arrivals at "
           "--offered-rate; spike: open loop, --spike-factor x --capacity-rate for a while",
           choices=SCENARIOS),
    Option("seed", int, 0, "seeds the inputs and the arrival times"),
    Option("request_log", str, "",
           "CSV file for one row per request (intended/actual send, latency, status)"),
    Option("think_time_ms", float, 0.0, "closed loop: pause after each answer"),
    Option("offered_rate", float, 10.0, "open: mean arrivals per second"),
    Option("arrivals", str, "poisson", "open/spike: gaps drawn exponential, or all equal",
           choices=("poisson", "uniform")),
    Option("late_ms", float, 10.0, "open/spike: a send later than this after its due time counts as late"),
    Option("max_in_flight", int, 5000,
           "open/spike: requests waiting for answers at once; past it, sends wait (and are late)"),
    Option("drain_s", float, 30.0, "open/spike: at the end, how long to wait for answers still due"),
    Option("request_timeout_s", float, 60.0, "give up on an answer after this long (status 0)"),
    Option("ramp_start_users", int, 1, "ramp: users in the first step"),
    Option("ramp_step_users", int, 2, "ramp: users added per step"),
    Option("ramp_step_s", float, 10.0, "ramp: seconds per step"),
    Option("ramp_max_users", int, 32, "ramp: users in the last step"),
    Option("capacity_rate", float, 50.0,
           "spike: the server's capacity in requests per second (measure it first)"),
    Option("spike_factor", float, 3.0,
           "spike: offered rate during the spike, as a multiple of --capacity-rate"),
    Option("spike_baseline", float, 0.5,
           "spike: offered rate before and after, as a fraction of --capacity-rate"),
    Option("spike_before_s", float, 10.0, "spike: seconds at the baseline first"),
    Option("spike_s", float, 10.0, "spike: seconds at the peak"),
    Option("spike_after_s", float, 20.0, "spike: seconds at the baseline after"),
)
# fmt: on

BY_NAME = {option.name: option for option in OPTIONS}
DEFAULTS = {option.name: option.default for option in OPTIONS}


def add_option(group, name: str, *, env_var: bool = False, **overrides):
    """Declare one option on an argparse (or Locust's configargparse) group.

    env_var: also read SERVELAB_<NAME> (Locust's parser only). overrides: argparse keywords that
    differ for this caller, e.g. the bench's default=None where None means "from the ceiling".
    """
    option = BY_NAME[name]
    kwargs: dict[str, Any] = {"type": option.type, "default": option.default, "help": option.help}
    if option.choices:
        kwargs["choices"] = option.choices
    if env_var:
        kwargs["env_var"] = option.env_var
    kwargs.update(overrides)
    return group.add_argument(option.flag, **kwargs)
