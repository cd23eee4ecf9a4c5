"""Turn a load-test run (report.json's dict) into report.md, the capacity, the PNG plots and (asked for) goal verdicts.

The dict, built by loadtest.run:
    targets: [{"name", "label", "levels": [{"n_mix", "users", "target_rate", "images_per_s", "p99_ms", "ok", "refused",
               "failed", "outcomes": {"ok": {"count", "per_s", "p50_ms", ...}, ...}, ...}], ...}]
    bound: {"p99_ms", "from"}: the capacity's latency bound
    ceiling: loadtest.backend_bench's JSON (or None), soak: RSS samples and growth (or None)

The capacity of a server for an n mix is its level with the most images/s among those whose p99 (of ok
answers) is at most the bound and where nothing failed; refusals (load shed by design) are allowed and shown.
The goals are this project's own targets against its baseline, peers and ceiling (loadtest.run --goals).
A level of a server of several models (loadtest.run --models) also holds "models": {name: {"users", "images_per_s",
"p99_ms", "ok", "refused", "failed", ...}}; models_table sets it beside the one-model server at the same load.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

OURS, BASELINE = "bentoml", "baseline"
MAXBATCH = OURS + "-maxbatch"  # + N: our service with DCGAN_MAX_BATCH=N
MODELS = OURS + "-models"  # + N: our service serving N models (loadtest.run --models N)
PEERS = ("mosec", "triton")  # loadtest.run --peers
GOAL_USERS = 32  # the goals compare traffic at 32 concurrent users
CEILING_FORM = "ort-service"  # loadtest.backend_bench's form with the service's own session options
SENT_SHARE = 0.95  # an open-loop level counts for the capacity only if locust sent at least this share of its target rate


def command_line(module: str, argv: list[str], set_here: tuple[str, ...] = ("DCGAN_API_KEY",)) -> str:
    """The command as a report records it: the DCGAN_* settings in the environment reach the servers a run starts,
    so they are part of it (but not those the run sets itself, nor the API key)."""
    settings = [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("DCGAN_") and k not in set_here]
    return shlex.join([*settings, "python", "-m", module, *argv])


def level(report: dict, target: str, n_mix: str, users: int) -> dict | None:
    for t in report["targets"]:
        if t["name"] == target:
            return next((lv for lv in t["levels"] if lv["n_mix"] == n_mix and lv["users"] == users), None)
    return None


def best_baseline(report: dict, n_mix: str, users: int | None) -> dict | None:
    """The fastest baseline (any thread setting) at this level, or at its own saturated level when users is None."""
    names = [t["name"] for t in report["targets"] if t["name"].startswith(BASELINE)]
    found = [(name, saturated(report, name, n_mix) if users is None else level(report, name, n_mix, users)) for name in names]
    return max(({**lv, "target": name} for name, lv in found if lv), key=lambda lv: lv["images_per_s"], default=None)


def best_peer(report: dict, n_mix: str, users: int) -> dict | None:
    """The faster of the peer servers (Mosec, Triton) at this level."""
    found = [{**lv, "target": t["name"]} for t in report["targets"] if t["name"] in PEERS for lv in t["levels"]]
    found = [lv for lv in found if lv["n_mix"] == n_mix and lv["users"] == users]
    return max(found, key=lambda lv: lv["images_per_s"], default=None)


def ceiling_at(report: dict, batch: float | None) -> tuple[int, float] | None:
    """(batch, images/s) of the in-process ONNX Runtime ceiling at the measured batch size closest to `batch`."""
    rates = ((report.get("ceiling") or {}).get("results") or {}).get(CEILING_FORM)
    if not isinstance(rates, dict) or not batch:
        return None
    b = min((int(k) for k in rates), key=lambda k: abs(k - batch))
    return b, rates[str(b)]


def saturated(report: dict, target: str, n_mix: str) -> dict | None:
    """The level with the most images/s: the target's saturated throughput for this mix."""
    levels = [lv for t in report["targets"] if t["name"] == target for lv in t["levels"] if lv["n_mix"] == n_mix]
    return max(levels, key=lambda lv: lv["images_per_s"], default=None)


def _goal(name: str, target: str, measured: str | None, met: bool, missing: str) -> dict:
    status = f"not measured: {missing}" if measured is None else ("met" if met else "MISSED")
    return {"goal": name, "target": target, "measured": measured or "-", "status": status}


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f} ms"


def load_of(lv: dict) -> float:
    """What a level offered: its target rate in open loop, else its concurrent users."""
    return lv.get("target_rate") or lv["users"]


def users(count: int) -> str:
    return f"{count} user" + "s" * (count != 1)


def load_label(lv: dict) -> str:
    return f"{lv['target_rate']:g} req/s" if lv.get("target_rate") else users(lv["users"])


def offered(lv: dict) -> bool:
    """Whether a level offered its load: always in closed loop; in open loop, if locust sent (nearly) the rate asked for.

    Requests locust never sent (every user busy, or locust out of CPU) have no latency to count, so a short level's p99 flatters.
    """
    return not lv.get("target_rate") or lv["sent_per_s"] >= SENT_SHARE * lv["target_rate"]


def within_bound(lv: dict, bound: float | None) -> bool:
    return bool(bound) and lv["ok"] > 0 and not lv["failed"] and lv["p99_ms"] is not None and lv["p99_ms"] <= bound and offered(lv)


def capacity(report: dict) -> list[dict]:
    """Per server and n mix: the level with the most images/s whose p99 is within the bound with nothing failed."""
    bound = (report.get("bound") or {}).get("p99_ms")
    out = []
    for target in report["targets"]:
        for mix in dict.fromkeys(lv["n_mix"] for lv in target["levels"]):
            levels = [lv for lv in target["levels"] if lv["n_mix"] == mix]
            within = [lv for lv in levels if within_bound(lv, bound)]
            best = max(within, key=lambda lv: lv["images_per_s"], default=None)
            out.append(
                {
                    "target": target["name"],
                    "label": target["label"],
                    "n_mix": mix,
                    "bound_ms": bound,
                    "images_per_s": best["images_per_s"] if best else None,
                    "requests_per_s": best["outcomes"]["ok"]["per_s"] if best else None,
                    "p99_ms": best["p99_ms"] if best else None,
                    "load": load_label(best) if best else None,
                    "refused_share": best["refused"] / best["requests"] if best and best["requests"] else None,
                    "highest_load_tried": load_label(max(levels, key=load_of)),
                    "at_highest_load": best is not None and load_of(best) == max(load_of(lv) for lv in levels),
                    "short_levels": [load_label(lv) for lv in levels if not offered(lv)],
                }
            )
    return out


def capacity_lines(report: dict) -> list[str]:
    """The answer a user asks for, one line per server and n mix."""
    lines = []
    for c in report.get("capacity") or []:
        head = f"capacity of {c['label']}, n {c['n_mix']}, p99 <= {ms(c['bound_ms'])} with nothing failed: "
        short = c.get("short_levels")
        short = f" (not counted: {', '.join(short)}, where locust sent under {SENT_SHARE:.0%} of the rate asked for)" if short else ""
        if c["images_per_s"] is None:
            lines.append(head + f"none of its levels{short}; try fewer users or lower rates")
            continue
        refused = f", {c['refused_share']:.1%} of requests refused (Retry-After)" if c["refused_share"] else ""
        more = "; the highest load tried: try more" if c["at_highest_load"] else ""
        lines.append(
            head + f"{c['images_per_s']:,.0f} images/s ({c['requests_per_s']:,.1f} req/s) at {c['load']}, p99 {ms(c['p99_ms'])}"
            f"{refused}{more}{short}"
        )
    return lines


def same_load(report: dict, target: str, lv: dict) -> dict | None:
    """The level of `target` with lv's n mix and load (users, and the rate in open loop)."""
    for t in report["targets"]:
        if t["name"] == target:
            for other in t["levels"]:
                if (other["n_mix"], other["users"], other.get("target_rate")) == (lv["n_mix"], lv["users"], lv.get("target_rate")):
                    return other
    return None


def _figures(lv: dict) -> dict:
    """A whole level's figures as a model's share has them (ok answers per second at the top)."""
    return {**lv, "ok_per_s": lv["outcomes"]["ok"]["per_s"]}


def _model_row(n_mix: str, load: str, server: str, model: str, users: str, m: dict, one: dict | None) -> str:
    ratio = f"{m['images_per_s'] / one['images_per_s']:.2f}x" if one and one["images_per_s"] else "-"
    return (
        f"| {n_mix} | {load} | {server} | {model} | {users} | {m['ok_per_s']:,.1f} | {m['images_per_s']:,.0f} | {ratio} | "
        f"{ms(m['p50_ms'])} | {ms(m['p99_ms'])} | {m['refused']:,} | {m['failed']:,} |"
    )


def models_table(report: dict) -> list[str]:
    """The levels of servers of several models (--models), each beside our one-model server at the same n mix and load:
    a row for the one-model server, one for the whole, one per model; "vs one model" divides images/s by the
    one-model server's. Empty without such a server."""
    lines = []
    for target in report["targets"]:
        for lv in target["levels"]:
            if not lv.get("models"):
                continue
            if not lines:
                lines = [
                    "| n | load | server | model | users | ok/s | images/s | vs one model | p50 | p99 | refused | failed |",
                    "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
                ]
            one, load, count = same_load(report, OURS, lv), load_label(lv), len(lv["models"])
            rows = [("ours, one model", "the default", one["users"], _figures(one))] if one else []
            rows.append((target["label"], f"all {count}", lv["users"], _figures(lv)))
            rows += [(target["label"], name, "-" if m["users"] is None else m["users"], m) for name, m in lv["models"].items()]
            lines += [_model_row(lv["n_mix"], load, server, model, str(users), m, one) for server, model, users, m in rows]
    return lines


def _ratio_goal(name: str, target: str, ours: dict | None, other: dict | None, factor: float, p99: str | None, missing: str) -> dict:
    """ours images/s >= factor x other's; p99: None, "lower" or "no worse" than the other's."""
    if not (ours and other and other["images_per_s"] > 0):
        return _goal(name, target, None, False, missing)
    ratio = ours["images_per_s"] / other["images_per_s"]
    versus = f"{other['target']}: " if "target" in other else ""
    measured = (
        f"{ratio:.2f}x ({ours['images_per_s']:,.0f} at {ours['users']} users vs {versus}{other['images_per_s']:,.0f} at {other['users']})"
    )
    met = ratio >= factor
    if p99:
        a, b = ours["p99_ms"], other["p99_ms"]
        measured += f"; p99 {ms(a)} vs {ms(b)}"
        met = met and a is not None and b is not None and (a < b if p99 == "lower" else a <= b)
    return _goal(name, target, measured, met, missing)


def _off_label(name: str | None) -> str:
    """What the batching goal compares with: batching off, or the smallest cap measured."""
    if name is None or name == f"{MAXBATCH}1":
        return "off (DCGAN_MAX_BATCH=1)"
    return f"max batch {name[len(MAXBATCH) :]} (the closest to off measured)"


def peer_goals(report: dict) -> list[dict]:
    """Against the servers users would pick instead (--peers), and against the model's own ceiling."""
    ours1 = level(report, OURS, "1", GOAL_USERS)
    need = f"needs --peers mosec,triton and a {GOAL_USERS}-user level with --mix"
    out = [
        _ratio_goal(
            f"vs the faster peer, n=1 at {GOAL_USERS} users",
            ">= 1.2x images/s and lower p99",
            ours1,
            best_peer(report, "1", GOAL_USERS),
            1.2,
            "lower",
            f"{need} 1",
        )
    ]
    alone = level(report, OURS, "1", 1)
    out.append(
        _goal(
            "n=1 at 1 user: p50",
            "<= 2 ms",
            alone and ms(alone["p50_ms"]),
            bool(alone) and alone["p50_ms"] <= 2,
            "needs a 1-user level with --mix 1",
        )
    )
    cpu = ours1 and ours1.get("server_cpu_ms_per_request")
    out.append(
        _goal(
            f"server CPU per request, n=1 at {GOAL_USERS} users",
            "<= 1.2 ms",
            cpu and f"{cpu:.2f} ms",
            bool(cpu) and cpu <= 1.2,
            f"a {GOAL_USERS}-user level with --mix 1",
        )
    )
    for mix in ("16", "64"):
        ours = level(report, OURS, mix, GOAL_USERS)
        out.append(
            _ratio_goal(
                f"vs the faster peer, n={mix} at {GOAL_USERS} users",
                ">= 1.0x images/s",
                ours,
                best_peer(report, mix, GOAL_USERS),
                1.0,
                None,
                f"{need} {mix}",
            )
        )
        at = ours and ceiling_at(report, ours.get("mean_batch_images"))
        measured = at and f"{ours['images_per_s'] / at[1]:.0%} ({ours['images_per_s']:,.0f} / {at[1]:,.0f} images/s at batch {at[0]})"
        out.append(
            _goal(
                f"n={mix} at {GOAL_USERS} users vs the ONNX Runtime ceiling at the batch it formed",
                ">= 80%",
                measured or None,
                bool(measured) and ours["images_per_s"] >= 0.8 * at[1],
                f"needs --mix {mix}, a {GOAL_USERS}-user level and a ceiling (not --ceiling none)",
            )
        )
    return out


def goals(report: dict) -> list[dict]:
    """The project's goals, each with what this run measured (ratios within this one run)."""
    ours1 = level(report, OURS, "1", GOAL_USERS)
    ours16 = saturated(report, OURS, "16")
    capped = [t["name"] for t in report["targets"] if t["name"].startswith(MAXBATCH)]
    off_name = min(capped, key=lambda name: int(name[len(MAXBATCH) :]), default=None)  # the closest to batching off
    out = [
        _ratio_goal(
            f"vs the fastest baseline, n=1 at {GOAL_USERS} users",
            ">= 1.5x images/s and lower p99",
            ours1,
            best_baseline(report, "1", GOAL_USERS),
            1.5,
            "lower",
            f"needs --baseline and a {GOAL_USERS}-user level with --mix 1",
        ),
        _ratio_goal(
            "vs the fastest baseline, n=16 saturated (best level of each)",
            ">= 1.0x images/s",
            ours16,
            best_baseline(report, "16", None),
            1.0,
            None,
            "needs --baseline and --mix 16",
        ),
        _ratio_goal(
            f"batching on vs {_off_label(off_name)}, n=1 at {GOAL_USERS} users",
            ">= 3x images/s, p99 no worse",
            ours1,
            off_name and level(report, off_name, "1", GOAL_USERS),
            3.0,
            "no worse",
            f"needs --compare-max-batch and a {GOAL_USERS}-user level with --mix 1",
        ),
    ]
    out += peer_goals(report)
    levels = [(t["name"], lv) for t in report["targets"] for lv in t["levels"]]
    failed = [f"{name} n={lv['n_mix']} u={lv['users']}: {lv['failed']}" for name, lv in levels if lv["failed"]]
    out.append(
        _goal(
            "zero failed requests at every level",
            "0",
            (", ".join(failed) or f"0 in {len(levels)} levels") if levels else None,
            not failed,
            "no levels ran",
        )
    )
    soak = report.get("soak")
    out.append(
        _goal(
            "soak: resident memory growth, first vs last minute",
            "< 10%",
            f"{soak['growth']:+.1%} over {soak['minutes']:g} min ({soak['first_mib']:,.0f} -> {soak['last_mib']:,.0f} MiB)"
            if soak
            else None,
            bool(soak) and soak["growth"] < 0.10,
            "run with --soak 10",
        )
    )
    return out


def _cores(lv: dict, key: str) -> str:
    """CPU seconds over the level's window: how many cores the server (or locust) kept busy."""
    seconds = lv.get(key)
    return "-" if seconds is None or not lv["window_s"] else f"{seconds / lv['window_s']:.2f}"


def _outcome_cells(lv: dict) -> str:
    o = lv["outcomes"]
    ok = f"{o['ok']['count']:,} | {ms(o['ok']['p50_ms'])} | {ms(o['ok']['p95_ms'])} | {ms(o['ok']['p99_ms'])}"
    rest = [f"{o[k]['count']:,} | {ms(o[k]['p99_ms'])}" for k in ("refused", "failed")]
    return " | ".join([ok, *rest])


def _load_cells(lv: dict) -> str:
    """Open loop: the target rate and the rate locust sent; closed loop: the users (and whether they waited as told)."""
    if lv.get("target_rate"):
        return f"{lv['target_rate']:g} req/s ({users(lv['users'])}) | {lv['sent_per_s']:,.1f}"
    return f"{users(lv['users'])}{' (no waits)' if lv.get('ignore_retry_after') else ''} | -"


def _level_row(target: dict, lv: dict, ceiling: dict | None) -> str:
    share = f" | {lv['images_per_s'] / ceiling['images_per_s']:.0%}" if ceiling else ""
    return (
        f"| {target['label']} | {lv['n_mix']} | {_load_cells(lv)} | {lv['outcomes']['ok']['per_s']:,.1f} | "
        f"{lv['images_per_s']:,.0f}{share} | {_outcome_cells(lv)} |"
    )


def _server_row(target: dict, lv: dict) -> str:
    batch = "-" if lv.get("mean_batch_requests") is None else f"{lv['mean_batch_requests']:.1f} ({lv['mean_batch_images']:.0f} img)"
    merged = "-" if lv.get("requests_per_generator_call") is None else f"{lv['requests_per_generator_call']:.1f}"
    cpu_ms = "-" if lv.get("server_cpu_ms_per_request") is None else f"{lv['server_cpu_ms_per_request']:.1f}"
    workers = [lv["server_cpu_ms_per_request_by_process"].get(f"worker {w}") for w in ("dcgan", "generator")]
    if None not in workers:
        cpu_ms += f" ({workers[0]:.1f} + {workers[1]:.1f})"
    cores = " / ".join(_cores(lv, key) for key in ("server_cpu_s", "locust_cpu_s", "other_cpu_s"))
    return (
        f"| {target['label']} | {lv['n_mix']} | {load_label(lv)} | {batch} | {merged} | {cores} | {cpu_ms} | "
        f"{ms(lv.get('server_sample_ms'))} | {ms(lv.get('server_generate_ms'))} | {lv['load_avg_1m_before']:.1f} |"
    )


def _how_measured(report: dict) -> str:
    settings = report["settings"]
    if settings.get("rates"):
        load = (
            "open loop: requests due at a fixed rate whatever the answers, sent by whichever user is free; latency counts "
            "from when a request was due, so time spent waiting for a free user (queueing) is in it (wrk2's correction "
            "for coordinated omission). *sent/s* is the rate locust achieved beside the target"
        )
    elif settings.get("ignore_retry_after"):
        load = "closed-loop users (no think time) that send again at once after a refusal (--ignore-retry-after)"
    else:
        load = "closed-loop users (no think time) that wait the server's Retry-After after a refusal, as dcgan_client does"
    return (
        f"Each level: {settings['duration_s']:g} s, measured once every user has started, of {load}. A "
        f"{settings['warmup_s']:g} s warm-up per server is not counted. Every answer is **ok** (HTTP 200 with the "
        "images asked for), **refused** (429 or 503 with Retry-After: the server shedding load it could not serve in "
        "time, by design) or **failed** (any other status, a connection error, a body that does not check out); each "
        "has its own latency percentiles (locust's, rounded to 2 significant digits above 100 ms), and p50/p95/p99 "
        "elsewhere are of the ok answers."
    )


def markdown(report: dict) -> str:
    m = report["machine"]
    ceiling = (report.get("ceiling") or {}).get("ceiling")
    bound = report.get("bound") or {}
    lines = [
        f"# Load test, {report['created']}",
        "",
        f"Machine: {m['cpu_model']}, {m['cores']} cores available, {m['memory_gib']:.0f} GiB RAM"
        + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU")
        + f". Locust runs on the same cores as the servers. Load average (1 min) at start {m['load_avg_1m_start']:.1f}, "
        f"at end {m.get('load_avg_1m_end', float('nan')):.1f}.",
        f"Code: git {report['git']}. Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".",
        f"Model: {report['model']}.",
        f"Command: `{report['command']}`",
    ]
    if report.get("interrupted"):
        lines += ["", "**Interrupted: partial results.**"]
    if any(t["levels"] for t in report["targets"]):  # a soak has a target but no sweep levels
        lines += [
            "",
            "## Capacity",
            "",
            f"The most images/s of a level whose p99 stayed at or under {ms(bound.get('p99_ms'))} (the bound: "
            f"{bound.get('from', '-')}) with nothing failed; refused requests are allowed and counted.",
            "",
            *[f"- {line}" for line in capacity_lines(report)],
            "",
            "![images/s against p99, one point per level; the bound dashed, the capacity starred](capacity.png)",
            "",
            "## Levels",
            "",
            _how_measured(report),
            "",
            "| server | n | load | sent/s | ok/s | images/s" + (" | of ceiling" if ceiling else "") + " | ok | p50 | p95 | p99 "
            "| refused | refused p99 | failed | failed p99 |",
            "|---|---|---|---:|---:|---:" + ("|---:" if ceiling else "") + "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for target in report["targets"]:
            lines += [_level_row(target, lv, ceiling) for lv in target["levels"]]
        reasons = [(t["label"], lv) for t in report["targets"] for lv in t["levels"] if lv.get("failure_reasons")]
        if reasons:
            lines += ["", "Why requests failed (the most frequent reasons per level):", ""]
            for label, lv in reasons:
                why = "; ".join(f"{r['occurrences']:,} x {r['error'][:160]}" for r in lv["failure_reasons"])
                lines.append(f"- {label}, n {lv['n_mix']}, {load_label(lv)}: {why}")
        table = models_table(report)
        if table:
            lines += [
                "",
                "## One model vs several",
                "",
                "Each level of our server of several models (--models: the served artifact registered under as many names, "
                "DCGAN_MODELS; each model its own ONNX Runtime session with its own threads, its own queue and deadline) "
                "beside our one-model server at the same n mix and load. The users are split evenly between the models "
                "(user i asks model i mod M for the whole level, naming it in the body; in open loop request k asks model "
                "k mod M) and every answer must say it came from the model asked for. Per model: its answers over the "
                "level's window; *vs one model*: images/s over the one-model server's at the same load.",
                "",
                *table,
            ]
        lines += [
            "",
            "## What the servers did",
            "",
            "Batch sizes and server-side durations come from the server's /metrics (`dcgan_generator_batch_images`, "
            "`dcgan_request_duration_seconds` and, for `/generate`, BentoML's `bentoml_service_request_duration_seconds`): "
            "requests (images) per batch are client requests "
            "(images) per ONNX Runtime call; with DCGAN_GENERATOR=service, requests per generator call are how many the "
            "entry merged into each internal call, and `/generate` is the generator's time per internal call: waiting for "
            "its batch, inference, its own HTTP handling. Servers without these metrics show -. Server CPU is that of "
            "the processes this run started (- for --host); *other* is the machine's busy CPU beyond the server's and "
            "locust's (other processes, this script): a level it disturbed shows a share of a core or more there.",
            "",
            "| server | n | load | requests (images) per batch | requests per generator call | cores busy: server / locust / other "
            "| server CPU ms/request (entry + generator) | server-side /sample | of which /generate | load avg |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for target in report["targets"]:
            lines += [_server_row(target, lv) for lv in target["levels"]]
        lines += ["", "Servers:"]
        for target in report["targets"]:
            lines.append(f"- **{target['label']}**: {target['description']}")
            lines += [f"  - {note}" for note in target.get("notes", [])]
    if report.get("ceiling"):
        c = report["ceiling"]
        lines += [
            "",
            "## In-process ceiling (`python -m loadtest.backend_bench`)",
            "",
            f"images/s of the generator alone, median of three windows of {c['seconds_per_cell'] / 3:.2f} s; load average "
            f"{c['machine']['load_avg_1m']:.1f} when it started.",
            "",
            c["table"],
        ]
    if report.get("soak"):
        s = report["soak"]
        lines += [
            "",
            "## Soak",
            "",
            f"{s['users']} users, n mix {s['n_mix']}, {s['minutes']:g} min after a {s['warmup_s']:g} s warm-up; resident memory "
            f"of every server process sampled every {s['interval_s']:g} s (soak_rss.csv, soak_rss.png). Growth compares the "
            f"mean of the first and the last {s['window_s']:g} s; the slope is fitted over the second half.",
            "",
            "| process | first | last | growth | slope, second half |",
            "|---|---:|---:|---:|---:|",
        ]
        for p in [*s["processes"], {**s, "name": "**all**"}]:
            lines.append(
                f"| {p['name']} | {p['first_mib']:,.1f} MiB | {p['last_mib']:,.1f} MiB | {p['growth']:+.1%} | "
                f"{p['late_slope_mib_per_min']:+.2f} MiB/min |"
            )
        lv = s["level"]
        lines += [
            "",
            f"Load during the soak: {lv['requests_per_s']:,.1f} req/s, {lv['images_per_s']:,.0f} images/s, "
            f"p99 {ms(lv['p99_ms'])}, {lv['refused']:,} refused and {lv['failed']:,} failed of {lv['requests']:,}.",
        ]
    if report.get("goals"):  # this project's own benchmark only (--goals)
        lines += ["", "## Goals", "", "| goal | target | measured | status |", "|---|---|---|---|"]
        lines += [f"| {g['goal']} | {g['target']} | {g['measured']} | {g['status']} |" for g in report["goals"]]
    for note in report.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _suptitle(fig, report: dict) -> None:
    m = report["machine"]
    fig.suptitle(f"{m['cpu_model']}, {m['cores']} cores (locust on the same cores), {report['created'][:10]}", fontsize=9)


def plot_capacity(report: dict, path: Path) -> None:
    """Per n mix: p99 against images/s, one point per level and a line per server; the bound dashed, the capacity starred."""
    plt = _pyplot()
    import matplotlib.ticker

    mixes = list(dict.fromkeys(lv["n_mix"] for t in report["targets"] for lv in t["levels"]))
    fig, axes = plt.subplots(1, len(mixes), figsize=(5.2 * len(mixes), 4.2), squeeze=False)
    bound = (report.get("bound") or {}).get("p99_ms")
    best = {(c["target"], c["n_mix"]): c for c in report.get("capacity") or []}
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")  # 50, 100, 2000 rather than 5x10^1
    for ax, mix in zip(axes[0], mixes):
        for i, target in enumerate(report["targets"]):
            levels = sorted((lv for lv in target["levels"] if lv["n_mix"] == mix and lv["p99_ms"] is not None), key=load_of)
            if not levels:
                continue
            x, y = [lv["images_per_s"] for lv in levels], [lv["p99_ms"] for lv in levels]
            ax.plot(x, y, "o-", color=f"C{i}", label=target["label"])
            for lv in levels:
                marker = "x" if lv["failed"] else None  # a level with failures cannot count
                if marker:
                    ax.plot(lv["images_per_s"], lv["p99_ms"], marker, color="red", markersize=9)
                ax.annotate(load_label(lv), (lv["images_per_s"], lv["p99_ms"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
            c = best.get((target["name"], mix))
            if c and c["images_per_s"] is not None:
                ax.plot(c["images_per_s"], c["p99_ms"], "*", color=f"C{i}", markersize=16, markeredgecolor="black")
                ax.annotate(
                    f"capacity {c['images_per_s']:,.0f} images/s",
                    (c["images_per_s"], c["p99_ms"]),
                    fontsize=8,
                    xytext=(-10, 6),
                    textcoords="offset points",
                    ha="right",
                    fontweight="bold",
                )
        if bound:
            ax.axhline(bound, color="grey", linestyle="--", label=f"bound: p99 {bound:,.0f} ms")
        ax.set(title=f"n mix {mix}: p99 against throughput", xlabel="images/s (ok answers)", ylabel="p99 of ok answers (ms)", yscale="log")
        ax.set_xlim(left=0, right=1.15 * max(lv["images_per_s"] for t in report["targets"] for lv in t["levels"]) or None)
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.margins(y=0.12)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    _suptitle(fig, report)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_sweep(report: dict, path: Path) -> None:
    """Per n mix: images/s against the load (with the ceiling) and p50/p99 latency against the load, one colour per server."""
    plt = _pyplot()
    import matplotlib.ticker

    mixes = list(dict.fromkeys(lv["n_mix"] for t in report["targets"] for lv in t["levels"]))
    fig, axes = plt.subplots(len(mixes), 2, figsize=(11, 3.6 * len(mixes)), squeeze=False)
    ceiling = (report.get("ceiling") or {}).get("ceiling")
    xlabel = "target requests/s (open loop)" if report["settings"].get("rates") else "concurrent users"
    for row, mix in zip(axes, mixes):
        for i, target in enumerate(report["targets"]):
            levels = sorted((lv for lv in target["levels"] if lv["n_mix"] == mix), key=load_of)
            if not levels:
                continue
            loads = [load_of(lv) for lv in levels]
            color = f"C{i}"
            row[0].plot(loads, [lv["images_per_s"] for lv in levels], "o-", color=color, label=target["label"])
            row[1].plot(loads, [lv["p99_ms"] for lv in levels], "o-", color=color, label=target["label"])
            row[1].plot(loads, [lv["p50_ms"] for lv in levels], ".:", color=color)
        if ceiling:
            row[0].axhline(ceiling["images_per_s"], color="grey", linestyle="--", label=f"in-process ceiling ({ceiling['form']})")
        row[0].set(title=f"throughput, n mix {mix}", xlabel=xlabel, ylabel="images/s")
        row[1].set(title=f"latency of ok answers, p99 (solid), p50 (dotted), n mix {mix}", xlabel=xlabel, ylabel="ms", yscale="log")
        all_loads = sorted({load_of(lv) for t in report["targets"] for lv in t["levels"]})
        for ax in row:
            ax.set_xscale("log", base=2)
            ax.set_xticks(all_loads, [f"{x:g}" for x in all_loads], minor=False)
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        row[0].set_ylim(bottom=0)
    _suptitle(fig, report)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_soak(samples: list[dict], path: Path) -> None:
    """Resident memory of each server process over the soak."""
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(8, 4))
    for name in sorted({s["name"] for s in samples}):
        points = [(s["t_s"] / 60, s["rss_bytes"] / 2**20) for s in samples if s["name"] == name]
        ax.plot(*zip(*points), label=name)
    ax.set(xlabel="minutes", ylabel="RSS (MiB)", title="soak: resident memory per server process")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
