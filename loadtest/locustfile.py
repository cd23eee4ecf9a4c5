"""Locust user for `POST /sample`: random seeds, a configurable mix of n, every response checked and counted as
one of three outcomes.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:3000 --n-mix 1:3,16:1
    locust -f loadtest/locustfile.py --host http://127.0.0.1:3000 --users 200 --rate 150   # open loop

`--n-mix` (or LOCUST_N_MIX) is a comma-separated list of n[:weight]; "1" sends only n=1, "1,4,16"
sends each equally often, "1:3,16:1" sends n=1 three times as often as n=16.

Outcomes (loadtest.response_checks.outcome): ok (HTTP 200 with a well-formed body: JSON, the seed and n
echoed back, exactly n base64 PNGs), refused (429 or 503 with Retry-After: the server shedding load by
design), failed (anything else, with its reason). Requests are named "OUTCOME ROUTE n=N", e.g.
"refused /sample n=16", so locust's statistics hold one row, with its own latency percentiles, per
outcome and n; only failed requests are locust failures.

Closed loop (the default): each user sends its next request as soon as the last one is answered, but
after a refusal it waits the Retry-After the server asked for, as dcgan_client does; `--ignore-retry-after`
sends again at once (raw hammering, for capacity tests). Latency is from send to answer.

Open loop (`--rate R`): requests are due at t0 + k/R (t0: when every user has started), whatever the
answers, and whichever user is free sends the next one due. When every user is busy the next request
is late, and its latency counts from when it was due, not from when it was sent (wrk2's correction for
coordinated omission), so the wait in the queue shows. Retry-After does not hold back the schedule.

With `--csv PREFIX` the user writes PREFIX_schedule.json at exit: when the measured window began and
ended and, in open loop, the target rate and how many requests were sent.

With `--v2-model NAME` the same requests go over the Open Inference Protocol instead, to
POST /v2/models/NAME/infer (the Triton peer, loadtest/triton_server.py), and are checked likewise.

With `--models A,B` (a server of several models, DCGAN_MODELS) each request names its model in the body
(`"model": "A"`), and the answer must say it came from that model (its `model` field, A:version). In closed
loop the users are split evenly: user i asks model i mod M, for the whole run; in open loop request k of
the schedule asks model k mod M. Requests are then named "OUTCOME ROUTE model=A n=N", so each model has its
own rows.

Run it from the repository root (or with the project installed): it imports loadtest.response_checks.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import gevent
import gevent.event
from locust import FastHttpUser, constant, events, task
from locust.runners import STATE_CLEANUP, STATE_STOPPED, STATE_STOPPING

from loadtest.response_checks import FAILED, MAX_SEED, REFUSED, outcome, parse_n_mix, problem_with, problem_with_v2, v2_body

STOPPING = (STATE_STOPPING, STATE_STOPPED, STATE_CLEANUP)
POLL_S = 0.1  # a user waiting for its request's due time checks this often whether the run is over


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    parser.add_argument(
        "--n-mix",
        type=str,
        env_var="LOCUST_N_MIX",
        default="1",
        help="images per request as n[:weight],... e.g. '1' or '1:3,16:1' (default: 1)",
    )
    parser.add_argument(
        "--v2-model",
        type=str,
        env_var="LOCUST_V2_MODEL",
        default="",
        help="send each request to POST /v2/models/NAME/infer (Open Inference Protocol) instead of POST /sample",
    )
    parser.add_argument(
        "--models",
        type=str,
        env_var="LOCUST_MODELS",
        default="",
        help="comma-separated model names of a server of several models: users split evenly between them, each "
        "request naming its model in the body (default: none, the server's default model)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        env_var="LOCUST_RATE",
        default=0.0,
        help="open loop: requests per second, due on a fixed schedule; latency counts from when each was due (default: closed loop)",
    )
    parser.add_argument(
        "--ignore-retry-after",
        action="store_true",
        env_var="LOCUST_IGNORE_RETRY_AFTER",
        default=False,
        help="closed loop: send again at once after a refusal instead of waiting the server's Retry-After",
    )


class Schedule:
    """Open loop: request k is due at t0 + k / rate; free users take them in order (one greenlet at a time: no lock)."""

    def __init__(self) -> None:
        self.rate = 0.0
        self.t0 = 0.0  # perf_counter() when the measured window began
        self.began = gevent.event.Event()
        self.began_wall = 0.0  # time.time() then, for PREFIX_schedule.json
        self.stopped = 0.0  # perf_counter() when the run's time was up
        self.taken = 0  # requests handed to a user
        self.sent = 0

    def begin(self) -> None:
        self.t0, self.began_wall = time.perf_counter(), time.time()
        self.began.set()

    def due(self) -> tuple[int, float]:
        """Take the next request: (its index k, when it is due in perf_counter seconds)."""
        self.began.wait()
        k, self.taken = self.taken, self.taken + 1
        return k, self.t0 + k / self.rate


SCHEDULE = Schedule()


@events.spawning_complete.add_listener
def _begin(user_count: int, **_) -> None:
    SCHEDULE.begin()  # locust resets its statistics at this moment too (--reset-stats)


@events.test_stopping.add_listener
def _stop(**_) -> None:
    SCHEDULE.stopped = time.perf_counter()


@events.quitting.add_listener
def _write_schedule(environment, **_) -> None:
    prefix = environment.parsed_options.csv_prefix
    if not prefix or not SCHEDULE.t0:
        return
    rate, elapsed = SCHEDULE.rate, (SCHEDULE.stopped or time.perf_counter()) - SCHEDULE.t0
    record = {
        "window_start": SCHEDULE.began_wall,  # time.time()
        "window_end": SCHEDULE.began_wall + elapsed,  # when the run's time was up; answers in flight still come after
        "rate": rate or None,
        "sent": SCHEDULE.sent if rate else None,
    }
    Path(f"{prefix}_schedule.json").write_text(json.dumps(record) + "\n")


class SampleUser(FastHttpUser):
    wait_time = constant(0)
    started = 0  # users started so far: the next one's index (greenlets take turns, no lock needed)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.ns, self.weights = parse_n_mix(options.n_mix)
        self.v2_model = options.v2_model
        self.models = [m.strip() for m in options.models.split(",") if m.strip()]
        self.index, SampleUser.started = SampleUser.started, SampleUser.started + 1
        self.honour_retry_after = not options.ignore_retry_after
        SCHEDULE.rate = options.rate

    def _wait_until(self, due: float) -> bool:
        """Sleep until `due`; False if the run ended meanwhile (the request is then not sent)."""
        while (left := due - time.perf_counter()) > 0:
            if self.environment.runner is not None and self.environment.runner.state in STOPPING:
                return False
            gevent.sleep(min(left, POLL_S))
        return True

    @task
    def sample(self) -> None:
        due, k = None, self.index
        if SCHEDULE.rate:
            k, due = SCHEDULE.due()
            if not self._wait_until(due):
                return
            SCHEDULE.sent += 1
        n = random.choices(self.ns, self.weights)[0]
        seed = random.randint(0, MAX_SEED)
        model = self.models[k % len(self.models)] if self.models and not self.v2_model else None
        if self.v2_model:
            path, body, route = f"/v2/models/{self.v2_model}/infer", v2_body(seed, n), "/v2 infer"
        else:
            path, body, route = "/sample", {"seed": seed, "n": n}, "/sample"
        if model is not None:
            body["model"] = model
            route += f" model={model}"
        with self.client.post(path, json=body, name=f"{route} n={n}", catch_response=True) as resp:
            answered = time.perf_counter()
            problem = None
            if resp.status_code == 200 and self.v2_model:
                problem = problem_with_v2(resp.content or b"", n)
            elif resp.status_code == 200:
                problem = problem_with(resp.content or b"", resp.headers.get("content-type", ""), seed, n, model)
            result, reason, wait_s = outcome(resp.status_code, resp.headers.get("retry-after") if resp.headers else None, problem)
            resp.request_meta["name"] = f"{result} {route} n={n}"
            if due is not None:  # open loop: from when the request was due, queueing in the load generator included
                resp.request_meta["response_time"] = (answered - due) * 1000
            if result == FAILED:
                if resp.status_code == 0:
                    reason = f"connection error: {resp.error}"
                elif resp.status_code != 200:
                    reason = f"{reason}: {(resp.text or '')[:200]}"
                resp.failure(reason)
            else:
                resp.success()
        if result == REFUSED and due is None and self.honour_retry_after:
            gevent.sleep(wait_s)
