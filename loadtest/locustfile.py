"""Locust user for `POST /sample`: random seeds, a configurable mix of n, every response checked.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:3000 --n-mix 1:3,16:1

`--n-mix` (or LOCUST_N_MIX) is a comma-separated list of n[:weight]; "1" sends only n=1, "1,4,16"
sends each equally often, "1:3,16:1" sends n=1 three times as often as n=16. Requests are named
"/sample n=N", so locust's statistics hold one row per n (loadtest.report reads images/s from them).

A response counts as a success only if it is well-formed: HTTP 200, JSON content type, the request's
seed and n echoed back, and exactly n base64 PNG images. Anything else is a failure, with its reason.
With `--v2-model NAME` the same requests go over the Open Inference Protocol instead, to
POST /v2/models/NAME/infer (the Triton peer, loadtest/triton_server.py), and are checked likewise.
Users wait for nothing between requests (closed loop): the offered load is set by the user count.
Run it from the repository root (or with the project installed): it imports loadtest.response_checks.
"""

from __future__ import annotations

import random

from locust import FastHttpUser, constant, events, task

from loadtest.response_checks import MAX_SEED, parse_n_mix, problem_with, problem_with_v2, v2_body


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


class SampleUser(FastHttpUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        self.ns, self.weights = parse_n_mix(self.environment.parsed_options.n_mix)
        self.v2_model = self.environment.parsed_options.v2_model

    @task
    def sample(self) -> None:
        n = random.choices(self.ns, self.weights)[0]
        seed = random.randint(0, MAX_SEED)
        if self.v2_model:
            path, body, name = f"/v2/models/{self.v2_model}/infer", v2_body(seed, n), f"/v2 infer n={n}"
        else:
            path, body, name = "/sample", {"seed": seed, "n": n}, f"/sample n={n}"
        with self.client.post(path, json=body, name=name, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
                return
            if self.v2_model:
                problem = problem_with_v2(resp.content or b"", n)
            else:
                problem = problem_with(resp.content or b"", resp.headers.get("content-type", ""), seed, n)
            if problem:
                resp.failure(problem)
            else:
                resp.success()
