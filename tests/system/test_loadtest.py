"""Load-test harness: numbers read correctly from locust's files and /metrics, and a real smoke run.

The smoke runs start real servers (`bentoml serve`, the FastAPI baseline) and real locust for a few
seconds. Nothing here asserts on speed: only that what was measured is reported faithfully.
"""

from __future__ import annotations

import csv
import datetime as dt
import email.utils
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from helpers import assert_one_line_error, locust_entry

from common.cli import UserError
from common.paths import REPO_ROOT as REPO
from loadtest import backend_bench, run
from loadtest.locust_run import parse_level
from loadtest.prometheus import level_figures, parse
from loadtest.response_checks import (
    FAILED,
    OK,
    PNG_BASE64_PREFIX,
    REFUSED,
    outcome,
    parse_n_mix,
    problem_with,
    problem_with_v2,
    retry_after_s,
    v2_body,
)

pytestmark = pytest.mark.slow  # deselect with -m 'not slow' for a quick local run


def _write_level(prefix: Path, entries: list[dict], schedule: dict, failures: str = "") -> None:
    Path(f"{prefix}.json").write_text(json.dumps(entries))
    Path(f"{prefix}_schedule.json").write_text(json.dumps(schedule))
    Path(f"{prefix}_failures.csv").write_text("Method,Name,Error,Occurrences\n" + failures)


def test_locust_results_are_read_per_outcome(tmp_path):
    """ok at two n, refusals and failures: each outcome its own count and percentiles; images only from ok answers."""
    prefix = tmp_path / "level"
    _write_level(
        prefix,
        [
            locust_entry("ok /sample n=1", {10: 50, 20: 40, 300: 10}, last=1009.0),
            locust_entry("ok /sample n=16", {100: 99, 900: 1}, last=1010.0),
            locust_entry("refused /sample n=16", {2: 30}, last=1008.0),
            locust_entry("failed /sample n=1", {5: 3, 7000: 1}, last=1005.0),
        ],
        {"window_start": 1000.0, "window_end": 1009.5, "rate": None, "sent": None},
        "POST,failed /sample n=1,HTTP 500: boom,3\nPOST,failed /sample n=1,connection error: reset,1\n",
    )
    stats = parse_level(prefix)
    assert stats.window_s == 10.0  # to the last answer, after the run's time was up
    assert (stats.ok.count, stats.refused.count, stats.failed.count) == (200, 30, 4)
    assert stats.images_per_s == pytest.approx((100 * 1 + 100 * 16) / 10.0)  # ok answers only
    assert stats.requests_per_s == pytest.approx(23.4) and stats.ok.per_s == pytest.approx(20.0)
    # ok: 50 at 10 ms, 40 at 20, 99 at 100, 10 at 300, 1 at 900 (200 in all): p50 100, p95 300, p99 300
    assert (stats.ok.p50_ms, stats.ok.p95_ms, stats.ok.p99_ms, stats.ok.max_ms) == (100, 300, 300, 900)
    assert (stats.refused.p99_ms, stats.failed.p50_ms, stats.failed.p99_ms) == (2, 5, 7000)
    assert stats.failure_reasons[0] == {"error": "HTTP 500: boom", "occurrences": 3}
    flat = stats.to_dict()
    assert (flat["requests"], flat["ok"], flat["refused"], flat["failed"], flat["p99_ms"]) == (234, 200, 30, 4, 300)
    assert flat["outcomes"]["refused"]["count"] == 30 and flat["target_rate"] is None


def test_locust_results_of_an_open_loop_level_carry_the_rate_sent(tmp_path):
    prefix = tmp_path / "level"
    schedule = {"window_start": 1000.0, "window_end": 1005.0, "rate": 50.0, "sent": 240}
    _write_level(prefix, [locust_entry("ok /sample n=2", {40: 10}, last=1004.0)], schedule)
    stats = parse_level(prefix)
    assert (stats.target_rate, stats.sent_per_s, stats.window_s) == (50.0, 48.0, 5.0)
    assert stats.refused.count == 0 and stats.refused.p99_ms is None


def test_locust_results_from_another_locustfile_are_refused(tmp_path):
    prefix = tmp_path / "level"
    schedule = {"window_start": 1000.0, "window_end": 1001.0, "rate": None, "sent": None}
    _write_level(prefix, [locust_entry("/sample n=1", {10: 1}, last=1001.0)], schedule)
    with pytest.raises(UserError, match="OUTCOME ROUTE n=N"):
        parse_level(prefix)


@pytest.mark.parametrize(
    ("status", "retry_after", "problem", "expected"),
    [
        (200, None, None, (OK, None)),
        (200, None, "1 images, expected 2", (FAILED, None)),
        (503, "1", None, (REFUSED, 1.0)),
        (429, "3", None, (REFUSED, 3.0)),
        (429, None, None, (FAILED, None)),  # BentoML's own max_concurrency 429 says nothing about when to come back
        (503, "soon", None, (FAILED, None)),
        (500, "1", None, (FAILED, None)),
        (0, None, None, (FAILED, None)),  # a connection error
    ],
)
def test_each_answer_is_ok_refused_or_failed(status, retry_after, problem, expected):
    result, reason, wait = outcome(status, retry_after, problem)
    assert (result, wait) == expected
    assert (reason == "") == (result == OK)


def test_retry_after_as_an_http_date():
    later = email.utils.format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30), usegmt=True)
    assert 25 < retry_after_s(later) <= 30
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: at once
    assert retry_after_s(None) is None and retry_after_s("-1") is None


def _metrics_page(batch_sum: float, batch_calls: float, generated: float, sample_s: float, requests: float) -> str:
    """A /metrics page like the service's: the batch histogram split over two workers, durations per endpoint and status.

    `requests` answered at /sample reached the generator in `generated` internal calls (the entry merges them).
    """
    return (
        "# TYPE dcgan_generator_batch_images histogram\n"
        'dcgan_generator_batch_images_bucket{le="1.0",worker_index="1"} 4.0\n'
        f'dcgan_generator_batch_images_sum{{worker_index="1"}} {batch_sum - 20}\n'
        f'dcgan_generator_batch_images_count{{worker_index="1"}} {batch_calls - 10}\n'
        'dcgan_generator_batch_images_sum{worker_index="2"} 20.0\n'
        'dcgan_generator_batch_images_count{worker_index="2"} 10.0\n'
        'bentoml_service_adaptive_batch_size_count{method_name="generate",worker_index="1"} 999.0\n'
        'bentoml_service_request_duration_seconds_sum{endpoint="/generate",http_response_code="200",runner_name="generator"} '
        f"{generated / 100}\n"
        'bentoml_service_request_duration_seconds_count{endpoint="/generate",http_response_code="200",runner_name="generator"} '
        f"{generated}\n"
        f'dcgan_request_duration_seconds_sum{{route="/sample"}} {sample_s}\n'
        f'dcgan_request_duration_seconds_count{{route="/sample"}} {requests + 2}\n'
        f'dcgan_requests_total{{route="/sample",status="200"}} {requests}\n'
        'dcgan_requests_total{route="/sample",status="503"} 2.0\n'
        'dcgan_requests_total{route="other",status="404"} 7.0\n'
    )


def test_metrics_differenced_into_batch_sizes_and_durations():
    before = parse(_metrics_page(120, 20, 100, 2.0, requests=300))
    after = parse(_metrics_page(3000, 50, 340, 8.0, requests=1020))
    assert (before.batch_calls, before.batch_images) == (20.0, 120.0)
    figures = level_figures(before, after)
    assert figures["mean_batch_requests"] == pytest.approx(720 / 30)  # client requests per ONNX Runtime call
    assert figures["mean_batch_images"] == pytest.approx(2880 / 30)  # images per call, from the histogram's sum
    assert figures["requests_per_generator_call"] == pytest.approx(720 / 240)
    assert figures["server_sample_ms"] == pytest.approx(1000 * 6.0 / 720)  # every answer: 720 200s (the 2 503s before and after)
    assert figures["server_generate_ms"] == pytest.approx(10.0)
    idle = level_figures(before, before)
    assert idle["mean_batch_requests"] is None and idle["server_sample_ms"] is None


def test_metrics_of_an_in_process_generator_have_no_generator_calls():
    """DCGAN_GENERATOR=inprocess: no /generate endpoint; batch sizes still come from the histogram."""
    page = lambda calls, images, requests: (  # noqa: E731
        f"dcgan_generator_batch_images_count {calls}\ndcgan_generator_batch_images_sum {images}\n"
        f'dcgan_request_duration_seconds_sum{{route="/sample"}} 1.0\n'
        f'dcgan_request_duration_seconds_count{{route="/sample"}} {requests}\n'
        f'dcgan_requests_total{{route="/sample",status="200"}} {requests}\n'
    )
    figures = level_figures(parse(page(10, 10, 10)), parse(page(30, 330, 110)))
    assert (figures["mean_batch_requests"], figures["mean_batch_images"]) == (5.0, 16.0)
    assert figures["requests_per_generator_call"] is None and figures["server_generate_ms"] is None
    assert parse("dcgan_requests_total 3\n").batch_calls == 0


def test_n_mix_parsing():
    assert parse_n_mix("1") == ([1], [1.0])
    assert parse_n_mix("1:3, 16:1,4") == ([1, 16, 4], [3.0, 1.0, 1.0])
    for bad in ("0", "x", "1:0", "1:-2", "4:a", ""):
        with pytest.raises(ValueError):
            parse_n_mix(bad)


def test_response_check_accepts_only_well_formed_bodies():
    png = PNG_BASE64_PREFIX + "AAAA"
    good = json.dumps({"seed": 7, "n": 2, "images": [png, png]}).encode()
    assert problem_with(good, "application/json", 7, 2) is None
    assert "content type" in problem_with(good, "text/html", 7, 2)
    assert "seed/n" in problem_with(good, "application/json", 8, 2)
    assert "images, expected" in problem_with(json.dumps({"seed": 7, "n": 2, "images": [png]}).encode(), "application/json", 7, 2)
    assert "not a base64 PNG" in problem_with(json.dumps({"seed": 7, "n": 1, "images": ["R0lGOD"]}).encode(), "application/json", 7, 1)
    assert "not JSON" in problem_with(b"<html>", "application/json", 7, 1)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--host", "http://192.0.2.1:3000"], "non-loopback"),
        (["--host", "ftp://127.0.0.1"], "not an http(s) URL"),
        (["--mix", "1:x"], "n or n:weight"),
        (["--users", "4,0"], ">= 1"),
        (["--baseline-threads", "default,0"], "neither 'default' nor a number"),
        (["--artifact", "/nonexistent"], "no model artifact"),
        (["--host", "http://127.0.0.1:9", "--compare-max-batch", "2"], "cannot be used with --host"),
        (["--host", "http://localhost:9", "--soak", "1"], "cannot be used with --host"),
        (["--rates", "10,0"], "> 0"),
        (["--rates", "fast"], "comma-separated list of numbers"),
        (["--open-users", "8"], "needs --rates"),
        (["--p99-bound-ms", "0"], "must be > 0"),
        (["--rates", "10", "--soak", "1"], "cannot be used with --rates"),
    ],
)
def test_run_cli_refuses_bad_input_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run.main(argv)
    assert_one_line_error((exit_info.value.code, capsys.readouterr().err), message)


def test_bench_table_and_ceiling(service_artifact, tmp_path, capsys):
    out = tmp_path / "bench.json"
    backend_bench.main(
        [
            "--artifact",
            str(service_artifact),
            "--forms",
            "ort-service,ort-cpu,torch-export,ort-cuda",
            "--batch-sizes",
            "1,4",
            "--seconds",
            "0.05",
            "--json",
            str(out),
        ]
    )
    report = json.loads(out.read_text())
    rates = {(form, int(b)): rate for form, cells in report["results"].items() if isinstance(cells, dict) for b, rate in cells.items()}
    assert set(rates) == {(f, b) for f in ("ort-service", "ort-cpu", "torch-export") for b in (1, 4)}
    assert all(r > 0 for r in rates.values())
    assert all(ms > 0 for cells in report["cpu_ms_per_image"].values() for ms in cells.values())
    assert isinstance(report["results"]["ort-cuda"], str)  # no GPU here: skipped, saying why
    best = max(rates, key=rates.get)
    assert (report["ceiling"]["form"], report["ceiling"]["batch"]) == best
    assert report["ort_ceiling"]["form"].startswith("ort-")
    assert "| ort-cpu |" in capsys.readouterr().out


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loadtest.run", *argv], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_smoke_sweep_writes_a_faithful_report(service_artifact, tmp_path):
    out = tmp_path / "report"
    done = _run(
        [
            "--artifact",
            str(service_artifact),
            "--users",
            "2",
            "--mix",
            "2",
            "--duration",
            "3",
            "--warmup",
            "1",
            "--baseline",
            "--baseline-threads",
            "1",
            "--goals",
            "--ceiling",
            "none",
            "--out",
            str(out),
        ]
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("report.json", "report.md", "sweep.png", "capacity.png"):
        assert (out / name).stat().st_size > 0
    report = json.loads((out / "report.json").read_text())
    assert [t["name"] for t in report["targets"]] == ["bentoml", "baseline-t1"]
    for target in report["targets"]:
        (lv,) = target["levels"]
        assert (lv["users"], lv["n_mix"], lv["refused"], lv["failed"]) == (2, "2", 0, 0)
        # The report's figures are the ones in locust's own files.
        from_locust = parse_level(out / "locust" / f"{target['name']}_n2_u2")
        assert lv["ok"] == lv["requests"] == from_locust.ok.count > 0
        assert lv["images_per_s"] == pytest.approx(2 * lv["requests_per_s"]) == pytest.approx(from_locust.images_per_s)
        assert lv["p99_ms"] == from_locust.ok.p99_ms
        md_lines = (out / "report.md").read_text().splitlines()
        md_row = next(line for line in md_lines if line.startswith(f"| {target['label']} | 2 | 2 users |"))
        assert f"| {lv['outcomes']['ok']['per_s']:,.1f} | {lv['images_per_s']:,.0f} | {lv['ok']:,} |" in md_row
    ours, base = (t["levels"][0] for t in report["targets"])
    assert ours["mean_batch_requests"] >= 1 and ours["mean_batch_images"] >= 2  # read from our /metrics
    assert ours["server_sample_ms"] > 0 and ours["server_generate_ms"] is None  # the model runs in the entry worker
    assert base["mean_batch_requests"] is None and base["server_sample_ms"] is None  # the baseline has no /metrics
    with open(out / "locust" / "bentoml_n2_u2_stats.csv", newline="") as f:
        assert {row["Name"] for row in csv.DictReader(f)} == {"ok /sample n=2", "Aggregated"}
    assert "## Goals" in (out / "report.md").read_text() and report["goals"]  # asked for with --goals


def test_smoke_soak_samples_every_server_process(service_artifact, tmp_path):
    out = tmp_path / "soak"
    done = _run(
        [
            "--artifact",
            str(service_artifact),
            "--soak",
            "0.12",
            "--soak-users",
            "2",
            "--mix",
            "1",
            "--warmup",
            "0",
            "--ceiling",
            "none",
            "--out",
            str(out),
        ]
    )
    assert done.returncode == 0, done.stdout + done.stderr
    soak = json.loads((out / "report.json").read_text())["soak"]
    names = {p["name"].split(" (")[0] for p in soak["processes"]}
    assert {"bentoml serve", "worker dcgan"} <= names
    assert soak["level"]["failed"] == 0 and soak["level"]["requests"] > 0
    with open(out / "soak_rss.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len({r["t_s"] for r in rows}) >= 2 and all(int(r["rss_bytes"]) > 0 for r in rows)
    assert soak["first_mib"] > 0 and (out / "soak_rss.png").stat().st_size > 0


def test_fp32_artifact_drops_only_the_fp16_model_and_still_verifies(service_artifact, tmp_path):
    from contract.artifact import ONNX, ONNX_FP16, verify

    source = verify(service_artifact)["files"]
    derived = run.fp32_artifact(service_artifact, tmp_path)
    files = verify(derived)["files"]  # hashes of everything left still match
    assert ONNX in files and ONNX_FP16 not in files and set(files) == set(source) - {ONNX_FP16}
    assert run.fp32_artifact(service_artifact, tmp_path) == derived  # made once, reused for the next n mix


def _lv(n_mix: str, users: int, images_per_s: float, p99_ms: float, failed: int = 0) -> dict:
    return {"n_mix": n_mix, "users": users, "images_per_s": images_per_s, "p99_ms": p99_ms, "failed": failed}


def test_goal_verdicts_from_a_constructed_report():
    """Each goal divides the right levels: n=1 at 32 users, saturated n=16, batching off, the peers, the ceiling."""
    from loadtest.report import goals

    report = {
        "targets": [
            {
                "name": "bentoml",
                "levels": [
                    {**_lv("1", 32, 450, 200), "server_cpu_ms_per_request": 1.5},
                    {**_lv("1", 1, 300, 4), "p50_ms": 2.0},
                    _lv("16", 16, 900, 400),
                    {**_lv("16", 32, 880, 450), "mean_batch_images": 60.0},
                    _lv("16", 64, 800, 900),
                ],
            },
            {"name": "mosec", "levels": [_lv("1", 32, 300, 150), _lv("16", 32, 800, 300)]},
            {"name": "triton", "levels": [_lv("1", 32, 360, 250)]},
            {"name": "bentoml-maxbatch4", "levels": [_lv("1", 32, 200, 150)]},
            {"name": "bentoml-maxbatch1", "levels": [_lv("1", 32, 150, 250)]},
            {"name": "baseline-t1", "levels": [_lv("1", 32, 300, 250), _lv("16", 64, 950, 500, failed=2)]},
            {"name": "baseline-tdefault", "levels": [_lv("1", 32, 200, 150)]},
        ],
        "ceiling": {"results": {"ort-cpu": {"64": 5000.0}, "ort-service": {"1": 500.0, "32": 1000.0, "64": 1100.0}}},
        "soak": {"growth": 0.12, "minutes": 10, "first_mib": 100, "last_mib": 112},
    }
    verdicts = {g["goal"]: (g["status"], g["measured"]) for g in goals(report)}
    status, measured = verdicts["vs the fastest baseline, n=1 at 32 users"]
    assert status == "met" and measured.startswith("1.50x") and "baseline-t1" in measured  # the faster baseline
    status, measured = verdicts["vs the fastest baseline, n=16 saturated (best level of each)"]
    assert status == "MISSED" and measured.startswith("0.95x")  # 900 (our best level) vs 950
    status, measured = verdicts["batching on vs off (DCGAN_MAX_BATCH=1), n=1 at 32 users"]
    assert status == "met" and measured.startswith("3.00x")  # against max batch 1, not 4
    status, measured = verdicts["vs the faster peer, n=1 at 32 users"]
    assert status == "met" and measured.startswith("1.25x") and "triton" in measured  # the faster peer; p99 200 < 250
    assert verdicts["n=1 at 1 user: p50"] == ("met", "2 ms")
    assert verdicts["server CPU per request, n=1 at 32 users"] == ("MISSED", "1.50 ms")
    status, measured = verdicts["vs the faster peer, n=16 at 32 users"]
    assert status == "met" and measured.startswith("1.10x")  # 880 vs mosec's 800
    status, measured = verdicts["n=16 at 32 users vs the ONNX Runtime ceiling at the batch it formed"]
    assert status == "met" and measured.startswith("80% (880 / 1,100 images/s at batch 64)")  # batch 64 is nearest 60
    assert verdicts["vs the faster peer, n=64 at 32 users"][0].startswith("not measured")
    status, measured = verdicts["zero failed requests at every level"]
    assert status == "MISSED" and "baseline-t1 n=16 u=64: 2" in measured
    assert verdicts["soak: resident memory growth, first vs last minute"][0] == "MISSED"


def test_goals_say_what_was_not_measured():
    from loadtest.report import goals

    verdicts = goals({"targets": [{"name": "bentoml", "levels": [_lv("1", 32, 450, 200)]}]})
    assert all(g["status"].startswith("not measured") for g in verdicts if g["goal"] != "zero failed requests at every level")


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--scenarios", "drain,flood"], "--scenarios 'drain,flood': choose from"), (["--artifact", "/nonexistent"], "no model artifact")],
)
def test_faults_cli_refuses_bad_input_in_one_line(argv, message, capsys):
    from loadtest import faults

    with pytest.raises(SystemExit) as exit_info:
        faults.main(argv)
    assert_one_line_error((exit_info.value.code, capsys.readouterr().err), message)


def test_faults_disconnect_scenario_prints_its_table(service_artifact, tmp_path):
    """One scenario against a real server (the others each have their own test in tests/service/test_service_*.py)."""
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest.faults", "--artifact", str(service_artifact), "--scenarios", "disconnect", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (row,) = json.loads((tmp_path / "faults.json").read_text())["rows"]
    assert row["scenario"].startswith("client disconnects") and row["sent"] == 40, row
    assert row["failed"] == "0" and row["lost"] == 0 and "whose clients left while they waited" in row["notes"], row
    assert "| scenario | sent | completed | refused | failed | lost |" in proc.stdout


def test_the_mosec_peer_does_the_service_s_work(service_artifact, service_url, tmp_path):
    """The Mosec peer answers POST /sample with the service's images, byte for byte, and refuses bad bodies with 4xx."""
    from loadtest.peers import serve_mosec

    body = {"seed": 77, "n": 3}
    ours = httpx.post(f"{service_url}/sample", json=body, timeout=30).json()
    with serve_mosec(service_artifact, tmp_path / "mosec.log", threads=1) as server:
        theirs = httpx.post(f"{server.url}/sample", json=body, timeout=30)
        bad = httpx.post(f"{server.url}/sample", json={"seed": -1}, timeout=30)
    assert theirs.status_code == 200, theirs.text
    assert problem_with(theirs.content, theirs.headers["content-type"], 77, 3) is None
    assert theirs.json()["images"] == ours["images"]
    assert bad.status_code == 422


def test_v2_requests_and_their_checks():
    body = v2_body(5, 2)
    assert body["inputs"][0] == {"name": "seed", "shape": [1, 1], "datatype": "INT64", "data": [5]}
    good = {"outputs": [{"name": "images", "datatype": "BYTES", "shape": [1, 2], "data": [PNG_BASE64_PREFIX + "AA"] * 2}]}
    assert problem_with_v2(json.dumps(good).encode(), 2) is None
    assert "shape" in problem_with_v2(json.dumps(good).encode(), 3)
    good["outputs"][0]["data"][1] = "R0lGODlh"  # a GIF
    assert problem_with_v2(json.dumps(good).encode(), 2) == "an image is not a base64 PNG"
    assert problem_with_v2(b"<html>", 2) == "body is not a v2 inference response"


def test_load_levels_and_what_locust_is_told(tmp_path):
    """Closed loop: one level per user count; open loop: one per rate, its users the rate x the bound (4..1024)."""
    from loadtest.locust_run import LoadLevel, locust_argv

    closed = run.parse_args(["--users", "4,1", "--ignore-retry-after"])
    assert run.load_levels(closed) == [LoadLevel(1, ignore_retry_after=True), LoadLevel(4, ignore_retry_after=True)]
    opened = run.parse_args(["--rates", "1000,0.5,10", "--p99-bound-ms", "2000"])
    assert [(lv.rate, lv.users) for lv in run.load_levels(opened)] == [(0.5, 4), (10, 20), (1000, 1024)]
    assert run.load_levels(run.parse_args(["--rates", "10", "--open-users", "3"])) == [LoadLevel(3, 10.0)]
    argv = locust_argv("http://127.0.0.1:9", LoadLevel(20, 10.0), "1", 3, tmp_path / "p")
    assert argv[argv.index("--rate") + 1] == "10" and argv[argv.index("--users") + 1] == "20"
    assert "--ignore-retry-after" in locust_argv("http://127.0.0.1:9", LoadLevel(4, ignore_retry_after=True), "1", 3, tmp_path / "p")
