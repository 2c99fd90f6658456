"""Load tests for the servelab servers: closed-loop users, a step ramp, open-loop arrivals, a spike.

    locust -f loadtests --host http://127.0.0.1:8000                 # web UI, steady users
    locust -f loadtests --headless -u 4 -r 4 -t 30s --host ...       # (a) steady closed loop
    locust -f loadtests --headless --scenario ramp --host ...        # (b) step ramp
    locust -f loadtests --headless --scenario open --offered-rate 40 -t 30s --host ...   # (c)
    locust -f loadtests --headless --scenario spike --capacity-rate 60 --host ...        # (d)

Every option (the table in _options.py) can also come from its SERVELAB_* environment variable;
see README.md.
A closed-loop user waits for each answer before sending again, so when the server slows down
the offered load drops with it and the slowdown hides (coordinated omission). The open-loop
scenarios send on a schedule drawn before the test, whatever the answers, and time each request
from when it was due: what a user would see.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import time
import urllib.request
import weakref

import gevent
from gevent.lock import BoundedSemaphore
from gevent.pool import Group
from locust import FastHttpUser, events, task

# Sibling modules; Locust puts this folder on sys.path while it imports a locustfile.
import _shapes as shapes  # isort: skip
from _inputs import Inputs, load_prompts  # isort: skip
from _options import DEFAULTS, OPTIONS, add_option  # isort: skip
from _request_log import RequestLog  # isort: skip

log = logging.getLogger("loadtests")

PROMPTS = load_prompts()
REQUEST_LOG = RequestLog()
SERVER = {"info": None, "mask_token": None}  # filled from GET /info at each test start
_user_numbers = itertools.count()
_open_loop_users: weakref.WeakSet = weakref.WeakSet()

# Unix-time stamps from the monotonic clock: immune to clock steps, comparable across requests.
_WALL0, _PERF0 = time.time(), time.perf_counter()


def now() -> float:
    return _WALL0 + (time.perf_counter() - _PERF0)


@events.init_command_line_parser.add_listener
def add_arguments(parser):
    group = parser.add_argument_group("servelab", "Options of the servelab load tests (loadtests/README.md)")
    for option in OPTIONS:
        action = add_option(group, option.name, env_var=True)
        # Argument groups lack Locust's include_in_web_ui keyword; the web UI reads the attribute.
        # The scenario is fixed at start-up (it picks the shape), so the UI does not offer it.
        action.include_in_web_ui = option.name != "scenario"


def rate_phases(options) -> list[shapes.RatePhase]:
    if options.scenario == "spike":
        return shapes.spike(
            options.capacity_rate,
            options.spike_factor,
            options.spike_baseline,
            options.spike_before_s,
            options.spike_s,
            options.spike_after_s,
        )
    # Locust applies --run-time only after a shape ends, so the schedule itself must end.
    return shapes.constant_rate(options.offered_rate, options.run_time or None)


@events.init.add_listener
def choose_scenario(environment, **_kwargs):
    """Install the users and shape that --scenario asks for (run before the test starts)."""
    options = environment.parsed_options
    if options is None:  # Locust used as a library: the caller sets users and shapes
        return
    OpenLoopUser.concurrency = options.max_in_flight
    for user_class in (ClosedLoopUser, OpenLoopUser):
        user_class.network_timeout = user_class.connection_timeout = options.request_timeout_s
    if options.scenario in ("steady", "ramp") and not options.user_classes:
        environment.user_classes = [ClosedLoopUser]
    if options.scenario == "ramp":
        environment.shape_class = shapes.StepRampShape(
            ClosedLoopUser,
            options.ramp_start_users,
            options.ramp_step_users,
            options.ramp_step_s,
            options.ramp_max_users,
        )
    elif options.scenario in ("open", "spike"):
        environment.user_classes = [OpenLoopUser]
        environment.shape_class = shapes.OpenLoopShape(OpenLoopUser, schedule_done)
    if environment.shape_class is not None:
        environment.shape_class.runner = environment.runner
    log.info("scenario %s, seed %d", options.scenario, options.seed)


def schedule_done() -> bool:
    users = list(_open_loop_users)
    return bool(users) and all(user.schedule_done for user in users)


@events.test_start.add_listener
def ask_server(environment, **_kwargs):
    """GET /info: which task the server runs decides whether inputs carry the mask token."""
    SERVER["info"] = SERVER["mask_token"] = None
    try:
        with urllib.request.urlopen(f"{environment.host.rstrip('/')}/info", timeout=10) as answer:
            SERVER["info"] = json.load(answer)
        model = SERVER["info"].get("model", {})
        if model.get("task") == "fill-mask":
            SERVER["mask_token"] = model.get("mask_token")
        log.info(
            "server: %s, model %s, task %s", SERVER["info"].get("variant"), model.get("id"), model.get("task")
        )
    except Exception as exc:  # a server without /info still gets plain sentences
        log.warning("GET %s/info failed (%s); sending inputs without a mask token", environment.host, exc)
    options = environment.parsed_options
    REQUEST_LOG.open(options.request_log if options else None)


@events.test_stopping.add_listener
def drain_open_loop(environment, **_kwargs):
    """Stop the arrivals, then give the answers still due --drain-s to come back."""
    users = list(_open_loop_users)
    for user in users:
        user.arrivals_open = False
    drain_s = environment.parsed_options.drain_s if environment.parsed_options else DEFAULTS["drain_s"]
    deadline = time.monotonic() + drain_s
    for user in users:
        user.in_flight.join(timeout=max(0.0, deadline - time.monotonic()))
        user.in_flight.kill(block=True)  # still waiting: logged with status -1
        user.report()
        _open_loop_users.discard(user)


@events.test_stop.add_listener
def close_log(environment, **_kwargs):
    REQUEST_LOG.close()


def post(user, seq: int, who: str, text: str, intended: float, log_unfinished: bool) -> None:
    """Send one input; report it to Locust and to the request log, timed from `intended`.

    log_unfinished: whether a request cut off by the end of the test gets a row (status -1).
    An open-loop request still unanswered after the drain is a miss; a closed-loop user's last
    request, cut off by the run time, is not (Locust does not count it either).
    """
    actual = now()
    answered, status, error = None, -1, "unfinished at stop"
    try:
        with user.client.post(
            "/",
            data=text.encode("utf-8"),
            name="/",
            catch_response=True,
            headers={"Content-Type": "text/plain; charset=utf-8"},
        ) as response:
            answered = now()
            status = response.status_code or 0
            error = "" if status == 200 else _error_message(response)
            # Locust's own statistics then show the latency from the due time too.
            response.request_meta["response_time"] = (answered - intended) * 1000
            response.request_meta["start_time"] = intended
            if status == 200:
                response.success()
            else:
                response.failure(f"{status} {error}")
    except gevent.GreenletExit:
        if log_unfinished:
            REQUEST_LOG.write(seq, who, intended, actual, None, -1, len(text.split()), error)
        raise
    REQUEST_LOG.write(seq, who, intended, actual, answered, status, len(text.split()), error)


def _error_message(response) -> str:
    if response.status_code == 0 or response.status_code is None:
        return f"{type(response.error).__name__}: {response.error}"[:200]
    try:
        return str(json.loads(response.content).get("error", ""))[:200]
    except Exception:
        return (response.text or "")[:200]


class ClosedLoopUser(FastHttpUser):
    """(a), (b) Send one input, wait for its answer, pause --think-time-ms, repeat."""

    def on_start(self):
        self.number = next(_user_numbers)
        options = self.environment.parsed_options
        seed = options.seed if options else DEFAULTS["seed"]
        self.inputs = Inputs(PROMPTS, f"{seed}:user:{self.number}", SERVER["mask_token"])
        self.think_s = (options.think_time_ms if options else DEFAULTS["think_time_ms"]) / 1000
        self.seq = itertools.count()

    def wait_time(self):
        return self.think_s

    @task
    def send(self):
        post(self, next(self.seq), str(self.number), self.inputs.draw(), now(), log_unfinished=False)


class OpenLoopUser(FastHttpUser):
    """(c), (d) Not a user but an arrival process: sends on a seeded schedule, never waits for answers.

    The scheduler greenlet draws each gap (exponential for Poisson arrivals), sleeps until that
    due time, and spawns one greenlet per request, so a slow answer delays nothing after it.
    Each request is timed from its due time. If the generator itself falls behind (CPU starved,
    --max-in-flight reached) the send is late; late sends are counted, and logged at the end.
    """

    concurrency = DEFAULTS["max_in_flight"]  # connections in the pool; set from --max-in-flight

    def on_start(self):
        options = self.environment.parsed_options
        # Without options (Locust used as a library), the table's defaults.
        self.seed = options.seed if options else DEFAULTS["seed"]
        self.late_ms = options.late_ms if options else DEFAULTS["late_ms"]
        self.poisson = (options.arrivals if options else DEFAULTS["arrivals"]) == "poisson"
        phases = rate_phases(options) if options else shapes.constant_rate(DEFAULTS["offered_rate"])
        self.rate_at = shapes.rate_at(phases)
        self.inputs = Inputs(PROMPTS, f"{self.seed}:inputs", SERVER["mask_token"])
        self.slots = BoundedSemaphore(options.max_in_flight if options else self.concurrency)
        self.in_flight = Group()
        self.arrivals_open = True
        self.schedule_done = False
        self.sent = self.late = 0
        self.max_late_ms = 0.0
        _open_loop_users.add(self)

    def wait_time(self):
        return 3600.0  # the one task below runs the whole schedule

    @task
    def run_schedule(self):
        arrivals = random.Random(f"{self.seed}:arrivals")
        start = now()
        offset = 0.0  # seconds from start to the next due time
        for seq in itertools.count():
            rate = self.rate_at(offset)
            if rate is None or not self.arrivals_open:
                break
            offset += arrivals.expovariate(rate) if self.poisson else 1.0 / rate
            if self.rate_at(offset) is None:
                break
            due = start + offset
            gevent.sleep(max(0.0, due - now()))
            if not self.arrivals_open:
                break
            self.in_flight.spawn(self._send, seq, self.inputs.draw(), due)
        self.schedule_done = True  # the shape then stops the test, which drains in_flight

    def _send(self, seq: int, text: str, due: float) -> None:
        try:
            self.slots.acquire()
        except gevent.GreenletExit:  # stopped while all slots were taken: never sent
            REQUEST_LOG.write(seq, "open", due, now(), None, -1, len(text.split()), "never sent")
            raise
        try:
            late_ms = (now() - due) * 1000
            self.sent += 1
            self.max_late_ms = max(self.max_late_ms, late_ms)
            if late_ms > self.late_ms:
                self.late += 1
            post(self, seq, "open", text, due, log_unfinished=True)
        finally:
            self.slots.release()

    def report(self):
        log.info(
            "open loop: %d requests sent, %d of them more than %.0f ms late (worst %.1f ms)",
            self.sent,
            self.late,
            self.late_ms,
            self.max_late_ms,
        )
