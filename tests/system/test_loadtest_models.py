"""Load tests of a server of several models: `loadtest.run --models N` (users split between models, per-model rows
beside the one-model server) and `loadtest.swap` (version swaps under load: durations, failures, images per version).

The smoke runs start real servers and real load for a few seconds; nothing here asserts on speed, only that what
was measured is reported faithfully and that no request failed.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import assert_one_line_error, locust_entry

from common.paths import REPO_ROOT as REPO
from loadtest import run, swap
from loadtest.locust_run import LoadLevel, locust_argv, parse_level, request_model
from loadtest.report import models_table
from loadtest.response_checks import PNG_BASE64_PREFIX, answered_by, problem_with

pytestmark = pytest.mark.slow  # deselect with -m 'not slow' for a quick local run


def test_locust_results_per_model(tmp_path):
    """One level of two models: the whole as before, and each model's own requests over the same window."""
    prefix = tmp_path / "level"
    entries = [
        locust_entry("ok /sample model=dcgan-a n=1", {10: 60, 50: 40}),
        locust_entry("ok /sample model=dcgan-b n=16", {100: 20}, last=1010.0),
        locust_entry("refused /sample model=dcgan-b n=16", {2: 5}),
        locust_entry("failed /sample model=dcgan-a n=1", {7: 2}),
    ]
    Path(f"{prefix}.json").write_text(json.dumps(entries))
    Path(f"{prefix}_schedule.json").write_text(json.dumps({"window_start": 1000.0, "window_end": 1009.5, "rate": None, "sent": None}))
    Path(f"{prefix}_failures.csv").write_text("Method,Name,Error,Occurrences\nPOST,failed /sample model=dcgan-a n=1,HTTP 500: boom,2\n")
    whole, a, b = parse_level(prefix), parse_level(prefix, model="dcgan-a"), parse_level(prefix, model="dcgan-b")
    assert whole.window_s == a.window_s == b.window_s == 10.0  # every model over the level's window
    assert (whole.ok.count, a.ok.count, b.ok.count) == (120, 100, 20)
    assert (a.failed.count, a.refused.count, b.failed.count, b.refused.count) == (2, 0, 0, 5)
    assert whole.images_per_s == pytest.approx(a.images_per_s + b.images_per_s) and b.images_per_s == pytest.approx(32.0)
    assert (a.ok.p50_ms, a.ok.p99_ms, b.ok.p99_ms) == (10, 50, 100)
    assert a.failure_reasons == [{"error": "HTTP 500: boom", "occurrences": 2}] and b.failure_reasons == []
    assert parse_level(prefix, model="dcgan-c").ok.count == 0
    assert request_model("ok /sample model=dcgan-a n=1") == "dcgan-a" and request_model("ok /sample n=1") is None


def test_locust_is_told_the_models(tmp_path):
    argv = locust_argv("http://127.0.0.1:9", LoadLevel(4), "1", 3, tmp_path / "p", models=("a", "b"))
    assert argv[argv.index("--models") + 1] == "a,b"
    assert "--models" not in locust_argv("http://127.0.0.1:9", LoadLevel(4), "1", 3, tmp_path / "p")


def test_an_answer_must_come_from_the_model_asked_for():
    png = PNG_BASE64_PREFIX + "AAAA"
    body = json.dumps({"seed": 7, "n": 1, "model": "dcgan-b:v2", "images": [png]}).encode()
    assert problem_with(body, "application/json", 7, 1) is None  # no model asked: any
    assert problem_with(body, "application/json", 7, 1, "dcgan-b") is None
    assert problem_with(body, "application/json", 7, 1, "dcgan-b:v2") is None
    assert "asked for 'dcgan-a'" in problem_with(body, "application/json", 7, 1, "dcgan-a")
    assert "asked for 'dcgan-b:v1'" in problem_with(body, "application/json", 7, 1, "dcgan-b:v1")
    assert not answered_by("dcgan-bb:v1", "dcgan-b") and not answered_by(None, "dcgan-b")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--models", "1"], "--models N must be >= 2"),
        (["--models", "two"], "invalid int value"),
        (["--models", "2", "--host", "http://127.0.0.1:9"], "cannot be used with --host"),
        (["--models", "2", "--soak", "1"], "cannot be used with --soak"),
        (["--models", "3", "--users", "1,2"], "give --users with a level >= 3"),
    ],
)
def test_models_option_refuses_bad_input_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run.main(argv)
    assert_one_line_error((exit_info.value.code, capsys.readouterr().err), message)


def test_models_levels_skip_fewer_users_than_models():
    args = run.parse_args(["--models", "3", "--users", "1,3,32"])
    target = run.Target("bentoml-models3", "ours, 3 models", "", lambda: None, models=("a", "b", "c"))
    assert [lv.users for lv in run.target_levels(args, target)] == [3, 32]
    assert target.notes == ["skipped, fewer users than its 3 models: 1 user"]
    run.target_levels(args, target)  # the next n mix: noted once
    assert len(target.notes) == 1
    assert run.model_names(3) == ["dcgan-generator", "dcgan-generator-2", "dcgan-generator-3"]


def _lv(images_per_s: float, p99: float, models: dict | None = None) -> dict:
    ok = {"count": 100, "per_s": images_per_s}
    lv = {"n_mix": "1", "users": 32, "images_per_s": images_per_s, "p50_ms": 5.0, "p99_ms": p99, "refused": 0, "failed": 0}
    return {**lv, "outcomes": {"ok": ok}, **({"models": models} if models else {})}


def test_models_table_sets_each_model_beside_one_model_at_the_same_load():
    m = lambda ips, p99: {"users": 16, "ok_per_s": ips, "images_per_s": ips, "p50_ms": 6.0, "p99_ms": p99, "refused": 0, "failed": 0}  # noqa: E731
    report = {
        "targets": [
            {"name": "bentoml", "label": "ours", "levels": [_lv(700, 60)]},
            {"name": "bentoml-models2", "label": "ours, 2 models", "levels": [_lv(560, 90, {"a": m(300, 85), "b": m(260, 95)})]},
        ]
    }
    header, _, one, whole, a, b = models_table(report)
    assert header.startswith("| n | load | server | model | users |")
    assert one == "| 1 | 32 users | ours, one model | the default | 32 | 700.0 | 700 | 1.00x | 5 ms | 60 ms | 0 | 0 |"
    assert whole == "| 1 | 32 users | ours, 2 models | all 2 | 32 | 560.0 | 560 | 0.80x | 5 ms | 90 ms | 0 | 0 |"
    assert a.startswith("| 1 | 32 users | ours, 2 models | a | 16 | 300.0 | 300 | 0.43x |") and "| 85 ms |" in a
    assert "| b | 16 |" in b
    assert models_table({"targets": report["targets"][:1]}) == []


def _module(module: str, *argv: str) -> subprocess.CompletedProcess:
    """`python -m module argv...` from the repository, which must succeed."""
    done = subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_smoke_models_sweep_reports_each_model(service_artifact, tmp_path):
    """--models 2: both servers swept at the same level; the two-model level's users split, each model's rows add up."""
    out = tmp_path / "report"
    argv = ["--artifact", str(service_artifact), "--models", "2", "--users", "2", "--mix", "1", "--duration", "2", "--warmup", "0"]
    done = _module("loadtest.run", *argv, "--ceiling", "none", "--out", str(out))
    report = json.loads((out / "report.json").read_text())
    assert [t["name"] for t in report["targets"]] == ["bentoml", "bentoml-models2"]
    (one,), (lv,) = (t["levels"] for t in report["targets"])
    assert "models" not in one and one["failed"] == 0 and one["ok"] > 0
    assert list(lv["models"]) == ["dcgan-generator", "dcgan-generator-2"]
    for name, m in lv["models"].items():
        assert (m["users"], m["failed"], m["refused"]) == (1, 0, 0) and m["ok"] > 0, name
        assert m["p99_ms"] is not None
    assert sum(m["ok"] for m in lv["models"].values()) == lv["ok"] and lv["failed"] == 0
    assert lv["other_cpu_s"] >= 0 and lv["server_cpu_s"] > 0  # the machine's CPU beyond the server's and locust's
    assert sum(m["images_per_s"] for m in lv["models"].values()) == pytest.approx(lv["images_per_s"])
    with open(out / "locust" / "bentoml-models2_n1_u2_stats.csv", newline="") as f:
        names = {row["Name"] for row in csv.DictReader(f)}
    assert names == {"ok /sample model=dcgan-generator n=1", "ok /sample model=dcgan-generator-2 n=1", "Aggregated"}
    md = (out / "report.md").read_text()
    assert "## One model vs several" in md
    for row in ("| 1 | 2 users | ours, one model | the default | 2 |", "| ours, 2 models | all 2 | 2 |", "| dcgan-generator-2 | 1 |"):
        assert row in md and row in done.stdout, row  # in the report and in the table printed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--warmup", "5", "--interval", "5"], "--warmup in [0, --interval)"),
        (["--clients", "0"], "must be >= 1"),
        (["--other", "/nonexistent"], "--other /nonexistent: no model artifact"),
    ],
)
def test_swap_cli_refuses_bad_input_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        swap.main(argv)
    assert_one_line_error((exit_info.value.code, capsys.readouterr().err), message)


def test_smoke_swaps_under_load(service_artifact, other_artifact, tmp_path):
    """Two swaps A -> B -> A under 4 clients: both answered 200, nothing failed, every answer's images its version's."""
    out = tmp_path / "swap"
    argv = ["--artifact", str(service_artifact), "--other", str(other_artifact), "--swaps", "2", "--interval", "1.5"]
    done = _module("loadtest.swap", *argv, "--warmup", "0.5", "--clients", "4", "--out", str(out))
    report = json.loads((out / "report.json").read_text())
    a, b = (v["tag"] for v in report["versions_served"])
    assert [(r["from"], r["to"], r["status"]) for r in report["swaps"]] == [(a, b, 200), (b, a, 200)]
    for r in report["swaps"]:
        assert r["body"]["tag"] == r["to"] and r["admin_s"] >= r["server_s"] > 0
        assert r["first_new_s"] is not None and r["old_after_200"] == 0
    t = report["totals"]
    assert t["failed"] == t["mismatched"] == 0 and t["ok"] == t["checked"] == t["identical"] + t["within_tolerance"] > 0
    assert set(t["by_version"]) == {a, b} and sum(t["by_version"].values()) == t["ok"]
    md = (out / "report.md").read_text()
    assert "| # | from -> to | admin request |" in md and "- failed requests: 0 (met" in md
    assert "| admin request (client) |" in done.stdout
