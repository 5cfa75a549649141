"""``bench.md``: the report of a ``make bench`` measurement (its figures against their targets, where a round's
and start-up's seconds go)."""

from __future__ import annotations

TARGETS = {"round_ratio": 1.05, "first_eval_s": 10.0, "setup_share": 0.05, "memory_ratio": 1.5, "deploy_ratio": 1.2}


# where a round's seconds go: (step, from, to), times from the run's timeline.csv and clients.csv
# ("first-start"/"last-finish": the round's first client call starting, its last one finishing)
ROUND_STEPS = [
    ("Flower, between rounds", "recorded@prev", "round-start"),
    ("strategy: choose clients, make instructions", "round-start", "instructions-made"),
    ("to the first client call (Flower: queue, dispatch)", "instructions-made", "first-start"),
    ("client calls, first start to last finish", "first-start", "last-finish"),
    ("last client to the strategy (Flower: reply, grid pull)", "last-finish", "replies-in"),
    ("aggregation", "replies-in", "aggregated"),
    ("evaluation (test and dev splits)", "aggregated", "evaluated"),
    ("records (CSV files, resume state)", "evaluated", "recorded"),
]


# where the seconds before the first evaluation go (round -1 of timeline.csv, then round 0)
STARTUP_STEPS = [
    ("flwr run to the ServerApp's process (FAB, SuperLink, SuperExec launch)", "flwr-run", "process-started"),
    ("imports: interpreter, Flower, torch, the app (Ray starts alongside)", "process-started", "app-imported"),
    ("Flower: run, FAB and context for the ServerApp", "app-imported", "components-start"),
    ("run config check", "components-start", "config-checked"),
    ("dataset (memory-mapped feature caches)", "config-checked", "dataset-loaded"),
    ("models, pretrained weights, strategy", "dataset-loaded", "strategy-built"),
    ("initial evaluation and its records", "strategy-built", "recorded@0"),
]


def _steps_table(title: str, columns: list[str], rows: list[tuple[str, list]]) -> list[str]:
    def cell(x) -> str:
        return "" if x is None or x != x else f"{x:.3f} s"  # x != x: NaN

    out = ["", title, "", "| step | " + " | ".join(columns) + " |", "| --- |" + " --- |" * len(columns)]
    return out + [f"| {name} | " + " | ".join(cell(x) for x in values) + " |" for name, values in rows]


def steps_tables(report: dict) -> list[str]:
    """Where a simulated round, the start-up and a deployed round go (from the runs' timeline.csv)."""
    lines: list[str] = []
    r = report["rounds"]
    if "flwr_steps" in r:
        f, b = r["flwr_steps"], r["bare_steps"]
        bare = {"client calls, first start to last finish": b["train_s"], "aggregation": b["aggregate_s"]}
        bare["evaluation (test and dev splits)"] = b["evaluate_s"]
        rows = [(name, [f[name], bare.get(name, 0.0)]) for name, _, _ in ROUND_STEPS]
        rows.append(("**round** (median of the rounds, not the sum of the medians)", [f["round"], b["round_s"]]))
        lines += _steps_table(
            f"Where a round goes (median of rounds 2..{r['rounds']}, seconds; the bare loop trains the same clients "
            "one after the other in one process):",
            ["`flwr run`", "bare loop"],
            rows,
        )
    st = report["startup"].get("steps")
    if st:
        lines += _steps_table(
            "Before the first evaluation (the timed run; wall clock from `flwr run`):",
            ["seconds"],
            [(name, [value]) for name, value in st.items()],
        )
    d = report.get("deployment")
    if d and "deploy_steps" in d:
        dep, sim = d["deploy_steps"], d["sim_steps"]
        names = [name for name, _, _ in ROUND_STEPS] + ["round"]
        lines += _steps_table(
            f"Where a deployed round goes ({d['nodes']} SuperNodes on this machine against the same clients "
            f"simulated; median of rounds 2..{d['rounds']}). Of the client calls: training "
            f"{d['deploy_train_s']:.2f} s (simulated {d['sim_train_s']:.2f} s); each message starts a fresh "
            f"ClientApp process (interpreter {d['clientapp_interpreter_s']:.2f} s + importing mirror_app.client_app "
            f"{d['clientapp_import_s']:.2f} s) whose set-up takes {d['deploy_setup_s']:.2f} s"
            + (
                f"; in a fresh process the first training call takes {d['cold_call']['first_fit_s']:.2f} s and the "
                f"next {d['cold_call']['second_fit_s']:.2f} s (torch imports torch._dynamo at the first optimiser: "
                f"{d['cold_call']['dynamo_import_s']:.2f} s)"
                if "cold_call" in d
                else ""
            )
            + "; a SuperNode with nothing to do asks for messages every 3 s (Flower's fixed poll):",
            ["deployed", "simulated"],
            [(name, [dep[name], sim[name]]) for name in names],
        )
    return lines


def markdown(report: dict) -> str:
    r, s, m, p = report["rounds"], report["client_setup"], report["memory"], report.get("preprocessing")

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    lines = [
        "# Benchmark",
        "",
        f"{report['machine']}; {report['settings']}.",
        "",
        "| measure | figure | target | |",
        "| --- | --- | --- | --- |",
        f"| `flwr run` round / bare loop round (median, rounds 2..{r['rounds']}) | {r['ratio']:.2f}x "
        f"({r['flwr_round_s']:.2f} s vs {r['bare_round_s']:.2f} s) | <= {TARGETS['round_ratio']}x | "
        f"{verdict(r['ratio'] <= TARGETS['round_ratio'])} |",
        f"| of a `flwr run` round: clients' own fit time, summed (median) | {r['flwr_client_train_s']:.2f} s | | |",
        f"| SuperLink start | {report['startup']['superlink_s']:.1f} s | | |",
        f"| `flwr run` until the initial evaluation is written (steps below) | "
        f"{report['startup']['app_start_s']:.1f} s | <= {TARGETS['first_eval_s']:.0f} s | "
        f"{verdict(report['startup']['app_start_s'] <= TARGETS['first_eval_s'])} |",
        f"| first round (Ray workers start, ClientApp import, modality queries) | "
        f"{report['startup']['first_round_s']:.1f} s | | |",
        f"| client set-up / (set-up + training), per ClientApp call | {100 * s['setup_share']:.2f} % "
        f"({1000 * s['setup_s_mean']:.1f} ms vs {s['train_s_mean']:.2f} s) | <= {100 * TARGETS['setup_share']:.0f} % | "
        f"{verdict(s['setup_share'] <= TARGETS['setup_share'])} |",
        f"| training calls that had to build the dataset and models | {s['workspace_builds']} of {s['calls']} "
        "(each worker builds them once, at its first call: round 1's modality query) | 0 | "
        f"{verdict(s['workspace_builds'] == 0)} |",
    ]
    mm = report["memory_main_run"]
    lines.append(
        f"| peak memory of the timed run ({mm['partitions']} partitions, Dirichlet) | PSS "
        f"{mm['peak_pss'] / 2**20:.0f} MiB, RSS {mm['peak_rss'] / 2**20:.0f} MiB | | |"
    )
    sizes = sorted(m, key=int)
    for n in sizes:
        lines.append(
            f"| peak memory, {n} partitions (IID, 2 rounds) | PSS {m[n]['peak_pss'] / 2**20:.0f} MiB, "
            f"RSS {m[n]['peak_rss'] / 2**20:.0f} MiB | | |"
        )
    if len(sizes) > 1:
        ratio = m[sizes[-1]]["peak_pss"] / m[sizes[0]]["peak_pss"]
        lines.append(
            f"| peak PSS, {sizes[-1]} / {sizes[0]} partitions | {ratio:.2f}x | "
            f"<= {TARGETS['memory_ratio']}x | {verdict(ratio <= TARGETS['memory_ratio'])} |"
        )
    if p:
        lines.append(
            f"| preprocessing ({p['videos']} clips of {p['clip']}, {p['workers']} workers): decode + "
            f"fbank + resize + cache | {p['prepare_videos_per_s']:.1f} videos/s in all, "
            f"{p['prepare_steady_videos_per_s']:.1f} videos/s once the workers run "
            "(warm, per-clip work x workers) | | |"
        )
        lines.append(
            f"| ffmpeg command line, decode alone (the reference), {p['workers']} processes at a time | "
            f"{p['ffmpeg_cli_videos_per_s']:.1f} videos/s; prepare / ffmpeg: "
            f"{p['ratio_prepare_over_ffmpeg']:.2f}x in all, {p['ratio_steady_over_ffmpeg']:.2f}x steady | | |"
        )
    d = report.get("deployment")
    if d:
        lines.append(
            f"| deployed round / simulated round, {d['nodes']} clients (make deploy-local vs flwr run, median of "
            f"rounds 2..{d['rounds']}) | {d['ratio']:.2f}x ({d['deploy_round_s']:.2f} s vs {d['sim_round_s']:.2f} s) "
            f"| <= {TARGETS['deploy_ratio']}x | {verdict(d['ratio'] <= TARGETS['deploy_ratio'])} |"
        )
    g = report.get("gpu_packing")
    if g and "rows" in g:
        for row in g["rows"]:
            lines.append(
                f"| GPU packing on {g['device']}: {row['clients_per_gpu']} client(s) per GPU "
                f"(client-resources-num-gpus={row['num_gpus_per_client']:g}) | round {row['round_s']:.2f} s, "
                f"GPU utilisation {row['gpu_util_mean_pct']:.0f} %, peak memory {row['gpu_mem_peak_mib']:.0f} MiB | | |"
            )
    elif g:
        lines.append(f"| GPU packing | {g['skipped']} | | |")
    lines.append(f"| GPU sharing | {report['gpu']} | | |")
    lines += steps_tables(report)
    lines += [
        "",
        "Bytes on the wire per client and round:",
        "",
        "| phase | client | task | received | sent |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in report["bytes_per_client"]:
        lines.append(
            f"| {row['phase']} | {row['modality']} | {row['task']} | {row['bytes_received'] / 1e3:.1f} kB | "
            f"{row['bytes_sent'] / 1e3:.1f} kB |"
        )
    lines += [
        "",
        f"Per round: {report['rounds']['bytes_per_round'] / 1e6:.2f} MB to plus from the clients "
        "(mean over the training rounds).",
        "",
    ]
    return "\n".join(lines)
