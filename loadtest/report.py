"""Turn a load-test run (report.json's dict) into report.md, the goal verdicts and the PNG plots.

The dict, built by loadtest.run:
    targets: [{"name", "label", "levels": [{"n_mix", "users", "images_per_s", "p99_ms", ...}], ...}]
    ceiling: loadtest.backend_bench's JSON (or None), soak: RSS samples and growth (or None)
"""

from __future__ import annotations

from pathlib import Path

OURS, BASELINE = "bentoml", "baseline"
MAXBATCH = OURS + "-maxbatch"  # + N: our service with DCGAN_MAX_BATCH=N
PEERS = ("mosec", "triton")  # loadtest.run --peers
GOAL_USERS = 32  # the goals compare traffic at 32 concurrent users
CEILING_FORM = "ort-service"  # loadtest.backend_bench's form with the service's own session options


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


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f} ms"


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
        measured += f"; p99 {_ms(a)} vs {_ms(b)}"
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
            alone and _ms(alone["p50_ms"]),
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
    """The issue's goals, each with what this run measured (ratios within this one run)."""
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
    failed = [f"{name} n={lv['n_mix']} u={lv['users']}: {lv['failures']}" for name, lv in levels if lv["failures"]]
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


def _row(target: dict, lv: dict, ceiling: dict | None) -> str:
    batch = "-" if lv.get("mean_batch_requests") is None else f"{lv['mean_batch_requests']:.1f} ({lv['mean_batch_images']:.0f} img)"
    merged = "-" if lv.get("requests_per_generator_call") is None else f"{lv['requests_per_generator_call']:.1f}"
    cpu_ms = "-" if lv.get("server_cpu_ms_per_request") is None else f"{lv['server_cpu_ms_per_request']:.1f}"
    workers = [lv["server_cpu_ms_per_request_by_process"].get(f"worker {w}") for w in ("dcgan", "generator")]
    if None not in workers:
        cpu_ms += f" ({workers[0]:.1f} + {workers[1]:.1f})"
    share = f"{lv['images_per_s'] / ceiling['images_per_s']:.0%}" if ceiling else "-"
    return (
        f"| {target['label']} | {lv['n_mix']} | {lv['users']} | {lv['requests_per_s']:,.1f} | {lv['images_per_s']:,.0f} | {share} | "
        f"{_ms(lv['p50_ms'])} | {_ms(lv['p95_ms'])} | {_ms(lv['p99_ms'])} | {lv['failures']} | {batch} | {merged} | "
        f"{_cores(lv, 'server_cpu_s')} / {_cores(lv, 'locust_cpu_s')} | {cpu_ms} | {_ms(lv.get('server_sample_ms'))} | "
        f"{_ms(lv.get('server_generate_ms'))} | {lv['load_avg_1m_before']:.1f} |"
    )


def markdown(report: dict) -> str:
    m = report["machine"]
    ceiling = (report.get("ceiling") or {}).get("ceiling")
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
        "",
        f"Each level: {report['settings']['duration_s']:g} s of closed-loop users (no think time) after every user has started; "
        f"a {report['settings']['warmup_s']:g} s warm-up per server is not counted. Latency percentiles are locust's "
        "(rounded to 2 significant digits above 100 ms). Batch sizes and server-side durations come from the server's "
        "/metrics (`dcgan_generator_batch_images` and BentoML's `bentoml_service_request_duration_seconds`): "
        "requests (images) per batch are client requests (images) per ONNX Runtime call; with DCGAN_GENERATOR=service, "
        "requests per generator call are how many the entry merged into each internal call, and "
        "`/generate` is the generator's time per internal call: waiting for its batch, inference, its own HTTP handling. "
        "Peers (Mosec, Triton) export no such figures.",
    ]
    if report.get("interrupted"):
        lines += ["", "**Interrupted: partial results.**"]
    if any(t["levels"] for t in report["targets"]):  # a soak has a target but no sweep levels
        lines += [
            "",
            "## Sweep",
            "",
            "| server | n | users | req/s | images/s | of ceiling | p50 | p95 | p99 | failures | requests (images) per batch "
            "| requests per generator call | cores busy: server / locust | server CPU ms/request (entry + generator) "
            "| server-side /sample | of which /generate | load avg |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for target in report["targets"]:
            lines += [_row(target, lv, ceiling) for lv in target["levels"]]
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
            f"p99 {_ms(lv['p99_ms'])}, {lv['failures']} failed of {lv['requests']:,}.",
        ]
    lines += ["", "## Goals", "", "| goal | target | measured | status |", "|---|---|---|---|"]
    lines += [f"| {g['goal']} | {g['target']} | {g['measured']} | {g['status']} |" for g in report["goals"]]
    for note in report.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def plot_sweep(report: dict, path: Path) -> None:
    """Per n mix: images/s vs users (with the ceiling) and p50/p99 latency vs users, one colour per server."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    mixes = sorted({lv["n_mix"] for t in report["targets"] for lv in t["levels"]})
    fig, axes = plt.subplots(len(mixes), 2, figsize=(11, 3.6 * len(mixes)), squeeze=False)
    ceiling = (report.get("ceiling") or {}).get("ceiling")
    for row, mix in zip(axes, mixes):
        for i, target in enumerate(report["targets"]):
            levels = sorted((lv for lv in target["levels"] if lv["n_mix"] == mix), key=lambda lv: lv["users"])
            if not levels:
                continue
            users = [lv["users"] for lv in levels]
            color = f"C{i}"
            row[0].plot(users, [lv["images_per_s"] for lv in levels], "o-", color=color, label=target["label"])
            row[1].plot(users, [lv["p99_ms"] for lv in levels], "o-", color=color, label=target["label"])
            row[1].plot(users, [lv["p50_ms"] for lv in levels], ".:", color=color)
        if ceiling:
            row[0].axhline(ceiling["images_per_s"], color="grey", linestyle="--", label=f"in-process ceiling ({ceiling['form']})")
        row[0].set(title=f"throughput, n mix {mix}", xlabel="concurrent users", ylabel="images/s")
        row[1].set(title=f"latency p99 (solid), p50 (dotted), n mix {mix}", xlabel="concurrent users", ylabel="ms", yscale="log")
        all_users = sorted({lv["users"] for t in report["targets"] for lv in t["levels"]})
        for ax in row:
            ax.set_xscale("log", base=2)
            ax.set_xticks(all_users, [str(u) for u in all_users], minor=False)
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        row[0].set_ylim(bottom=0)
    fig.suptitle(
        f"{report['machine']['cpu_model']}, {report['machine']['cores']} cores (locust on the same cores), {report['created'][:10]}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_soak(samples: list[dict], path: Path) -> None:
    """Resident memory of each server process over the soak."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
