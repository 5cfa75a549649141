"""Two studies of ``python -m mirror_app.studies.ablations``: clients that lie (``robust``) and clients that must not
be seen (``privacy``). Both run ModalityMirror through ``flwr run`` like the Table 1 sweep (same preset, private
SuperLink, resumable, a finished run never redone) and write ``runs.csv``, ``ablation.md`` and a figure.

``robust``: every attack (sign-flip, scale x10, gaussian, label-flip, inflate-count) at attack-fraction 0.1, 0.2
and 0.3, and the clean run, against each aggregator (fedavg; fedavg with counts capped at a fifth of a group;
fedmedian; fedtrimmedavg at beta 0.2; Krum with f = 3). ``privacy``: the clean run, then central DP at noise
multipliers 1, 1.5, 2 and 3, local DP at 1 and 2, secure aggregation alone and with local DP at 2, with the clipping
norm set to the median update norm of the first seed's clean run (``update_norm`` in its clients.csv); and what
federation would make central DP's epsilon <= 8 affordable, from the accountant alone (``privacy_budget.png``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from mirror_app.deploy.preflight import parse_pairs
from mirror_app.studies.runs import Cell, _save, collect
from mirror_app.studies.sweep import _cell

ATTACKS = {
    "sign-flip": "attack='sign-flip'",
    "scale x10": "attack='scale' attack-scale=10.0",
    "gaussian": "attack='gaussian' attack-std=1.0",
    "label-flip": "attack='label-flip'",
    "inflate-count": "attack='inflate-count'",
}
FRACTIONS = (0.1, 0.2, 0.3)
AGGREGATORS = {
    "fedavg": "aggregator='fedavg'",
    "fedavg, counts capped": "aggregator='fedavg' max-client-weight=0.2",
    "fedmedian": "aggregator='fedmedian'",
    "fedtrimmedavg": "aggregator='fedtrimmedavg' trim-beta=0.2",
    "krum": "aggregator='krum' num-malicious=3",
}
CENTRAL_SIGMAS = (1.0, 1.5, 2.0, 3.0)
LOCAL_SIGMAS = (1.0, 2.0)
METHOD = "modality-mirror"


def _tag(text: str) -> str:
    return text.replace(", ", "-").replace(" ", "")


ATTACK_TAGS = {_tag(a): a for a in ATTACKS}  # the names ``--attacks`` takes and run folders carry ('scalex10')


def attack_names(text: str) -> tuple[str, ...]:
    """``--attacks`` ('sign-flip,scalex10'): the ATTACKS keys it names, in the study's order; one-line error."""
    asked = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in asked if t not in ATTACK_TAGS]
    if unknown or not asked:
        raise ValueError(f"--attacks {text!r}: give attacks from {', '.join(ATTACK_TAGS)}, comma-separated")
    return tuple(a for tag, a in ATTACK_TAGS.items() if tag in asked)


def robust_cells(
    rate: float, seeds: list[int], fractions: tuple[float, ...] = FRACTIONS, attacks: tuple[str, ...] = tuple(ATTACKS)
) -> list[Cell]:
    """Per seed (seed-major): the clean run under each aggregator, then each attack and fraction under each."""
    cells = []
    for s in seeds:
        for agg, agg_config in AGGREGATORS.items():
            cells.append(Cell(METHOD, rate, s, agg_config, f"clean-{_tag(agg)}"))
        for fraction in fractions:
            for attack, attack_config in ((a, c) for a, c in ATTACKS.items() if a in attacks):
                for agg, agg_config in AGGREGATORS.items():
                    config = f"{agg_config} {attack_config} attack-fraction={fraction}"
                    cells.append(Cell(METHOD, rate, s, config, f"{_tag(attack)}-f{fraction:g}-{_tag(agg)}"))
    return cells


def cell_setting(tag: str) -> tuple[str, float, str]:
    """(attack, fraction, aggregator) of a robust cell's tag ('clean-fedmedian', 'sign-flip-f0.2-krum')."""
    agg = max((a for a in AGGREGATORS if tag.endswith("-" + _tag(a))), key=len)
    head = tag[: -len(_tag(agg)) - 1]
    if head == "clean":
        return "none", 0.0, agg
    attack_tag, _, fraction = head.rpartition("-f")
    return next(a for a in ATTACKS if _tag(a) == attack_tag), float(fraction), agg


def _labelled(cells: list[Cell], out: Path) -> pd.DataFrame:
    """runs.csv's rows of ``cells`` with each cell's attack, fraction and aggregator as columns."""
    runs = collect(cells, out)
    settings = [cell_setting(c.tag) for c in cells]
    runs["attack"] = [a for a, _, _ in settings]
    runs["fraction"] = [f for _, f, _ in settings]
    runs["aggregator"] = [g for _, _, g in settings]
    return runs


def _fractions(runs: pd.DataFrame) -> list[float]:
    """The attack fractions a robust study ran (``--fractions``)."""
    return sorted({float(f) for f in runs["fraction"] if f > 0})


def _attacks(runs: pd.DataFrame) -> list[str]:
    """The attacks a robust study ran (``--attacks``), in the study's order."""
    planned = set(runs["attack"])
    return [a for a in ATTACKS if a in planned]


def _values(ok: pd.DataFrame, attack: str, fraction: float, agg: str, metric: str) -> pd.Series:
    """One cell's best-dev ``metric`` in % over its finished seeds."""
    sel = ok[(ok["attack"] == attack) & np.isclose(ok["fraction"], fraction) & (ok["aggregator"] == agg)]
    return 100 * pd.to_numeric(sel[f"best_dev_{metric}"], errors="coerce").dropna()


def robust_table(cells: list[Cell], out: Path) -> tuple[str, pd.DataFrame]:
    runs = _labelled(cells, out)
    ok = runs[runs["status"] == "ok"]
    aggs = list(AGGREGATORS)
    fractions = _fractions(runs)
    attacks = _attacks(runs)
    lines = []
    for metric, title in (("audio_top1", "audio top-1"), ("av_top1", "AV top-1")):
        lines += [
            f"Best-dev {title} in % (mean +- std over seeds), ModalityMirror; rows: attack and attack-fraction.",
            "",
            "| attack | fraction | " + " | ".join(aggs) + " |",
            "|" + " --- |" * (len(aggs) + 2),
        ]
        for attack, fraction in [("none", 0.0)] + [(a, f) for a in attacks for f in fractions]:
            row = []
            for agg in aggs:
                values = _values(ok, attack, fraction, agg, metric)
                std = f" +- {values.std(ddof=0):.1f}" if len(values) > 1 else ""
                row.append(f"{values.mean():.1f}{std}" if len(values) else "n/a")
            lines.append(f"| {attack} | {fraction:g} | " + " | ".join(row) + " |")
        lines.append("")
    seeds = ok.groupby(["attack", "fraction", "aggregator"])["seed"].nunique()
    lines.append(
        f"Seeds per cell: {seeds.min() if len(seeds) else 0}-{seeds.max() if len(seeds) else 0}. AV top-1 is the "
        "audiovisual model's at the same round (ModalityMirror's headline round is in phase 2, where it is the "
        "frozen teacher). Krum tolerates f = 3 of a group's updates; groups with fewer than 2 f + 3 = 9 "
        "contributors (the audio head, the video encoder and fusion head in phase 1) are aggregated by the "
        "median, counted in clients.csv (fallback_groups)."
    )
    return "\n".join(lines) + "\n", runs


def krum_kept_table(cells: list[Cell], out: Path) -> str:
    """Whose updates Krum kept, from the ``kept_groups`` of the attacked Krum runs' clients.csv (runs made here;
    records hold no clients.csv): per attack, fraction and phase, the updates kept (a client and a group in a
    round), how many of them were attackers', and the attackers' share of the clients of those rounds. '' when no
    such run is here."""
    rows = []
    for cell in cells:
        attack, fraction, agg = cell_setting(cell.tag)
        path = out / "runs" / cell.key / "clients.csv"
        if agg != "krum" or attack == "none" or not path.is_file():
            continue
        clients = pd.read_csv(path, keep_default_na=False)
        if "kept_groups" not in clients.columns:
            continue
        clients = clients[clients["status"] == "ok"]
        attacker = clients["attacker"].astype(str).str.lower() == "true"
        kept = clients["kept_groups"].astype(str).str.split(";").apply(lambda g: len([x for x in g if x]))
        share = attacker.groupby(clients["round"]).transform("mean")  # attackers among that round's clients
        for phase in clients["phase"].unique():
            here = (clients["phase"] == phase) & (kept > 0)
            rows.append(
                {
                    "attack": attack,
                    "fraction": fraction,
                    "phase": phase,
                    "seed": cell.seed,
                    "kept": int(kept[here].sum()),
                    "kept_attackers": int(kept[here & attacker].sum()),
                    "share": float((share[here] * kept[here]).sum()),  # expected attackers' updates among kept
                }
            )
    if not rows:
        return ""
    frame = pd.DataFrame(rows)
    lines = [
        "Updates Krum kept (a client's update of one group in one round, clients.csv kept_groups), and how many "
        "were attackers', against the attackers' share of the clients of those rounds; over the seeds run here.",
        "",
        "| attack | fraction | phase | seeds | updates kept | attackers' (%) | attackers among the clients (%) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (attack, fraction, phase), g in frame.groupby(["attack", "fraction", "phase"], sort=False):
        kept = g["kept"].sum()
        lines.append(
            f"| {attack} | {fraction:g} | {phase} | {g['seed'].nunique()} | {kept} | "
            f"{100 * g['kept_attackers'].sum() / max(kept, 1):.1f} | {100 * g['share'].sum() / max(kept, 1):.1f} |"
        )
    return "\n".join(lines) + "\n"


def robust_figure(runs: pd.DataFrame, out: Path) -> Path | None:
    ok = runs[runs["status"] == "ok"]
    if ok.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions = (0.0, *_fractions(runs))
    attacks = _attacks(runs)  # as in the table
    metrics = (("audio_top1", "audio"), ("av_top1", "AV"))
    fig, axes = plt.subplots(
        len(metrics), len(attacks), figsize=(4 * len(attacks), 3.2 * len(metrics)), sharey="row", squeeze=False
    )
    for row, (metric, name) in zip(axes, metrics):
        for ax, attack in zip(row, attacks):
            for agg in AGGREGATORS:  # the clean run at fraction 0, then the attack's fractions
                seeds = [(f, _values(ok, attack if f else "none", f, agg, metric)) for f in fractions]
                xs, ys, sd = np.array([(f, v.mean(), v.std(ddof=0)) for f, v in seeds if len(v)]).reshape(-1, 3).T
                (line,) = ax.plot(xs, ys, marker="o", label=agg)
                ax.fill_between(xs, ys - sd, ys + sd, color=line.get_color(), alpha=0.12, linewidth=0)  # +- std
            ax.set(title=attack, xlabel="attack-fraction")
        row[0].set(ylabel=f"best-dev {name} top-1 (%)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out / "robust.png")


# ----------------------------------------------------------------------------------------------- privacy
def privacy_clean_cells(rate: float, seeds: list[int]) -> list[Cell]:
    return [Cell(METHOD, rate, s, "", "nodp") for s in seeds]


def clipping_norm(out: Path, clean: Cell) -> float:
    """The median update norm of a finished clean run (clients.csv ``update_norm``), to two significant digits."""
    clients = pd.read_csv(out / "runs" / clean.key / "clients.csv")
    norm = float(clients.loc[clients["status"] == "ok", "update_norm"].median())
    return float(f"{norm:.2g}")


def privacy_dp_cells(rate: float, seeds: list[int], norm: float) -> list[Cell]:
    """Per seed: central DP at each of CENTRAL_SIGMAS, local DP at each of LOCAL_SIGMAS, secure aggregation alone and
    with local DP at the largest local sigma (the usual pairing: the server sees only the sum of noised updates).
    The clipping norm is in every DP key, so a sweep whose clean run gave another norm never resumes from these."""
    cells = []
    for s in seeds:
        for mode, sigmas in (("central", CENTRAL_SIGMAS), ("local", LOCAL_SIGMAS)):
            for sigma in sigmas:
                config = f"dp='{mode}' dp-noise-multiplier={sigma} dp-clipping-norm={norm}"
                cells.append(Cell(METHOD, rate, s, config, f"dp-{mode}-s{sigma:g}-c{norm:g}"))
        cells.append(Cell(METHOD, rate, s, "secure-aggregation=true", "secagg"))
        sigma = max(LOCAL_SIGMAS)
        config = f"secure-aggregation=true dp='local' dp-noise-multiplier={sigma} dp-clipping-norm={norm}"
        cells.append(Cell(METHOD, rate, s, config, f"secagg-dp-local-s{sigma:g}-c{norm:g}"))
    return cells


def _setting(cell: Cell) -> tuple[str, float]:
    """(the privacy row of a cell: off, central, local, secure aggregation[, + local], its noise multiplier)."""
    pairs = parse_pairs(cell.config)
    dp = pairs.get("dp", "'off'").strip("'")
    secure = pairs.get("secure-aggregation") == "true"
    name = ("secure aggregation" + (f" + {dp} DP" if dp != "off" else "")) if secure else dp
    return name, float(pairs.get("dp-noise-multiplier", "nan"))


def audit_cell(audit: dict | None, mode: str, sigma: float) -> str:
    """The audit's row for a privacy setting (``mirror_app.studies.audit``'s recorded report): its empirical lower
    bound on one release's epsilon against the accountant's, or '-' where the audit has no such row."""
    rows = [
        r
        for r in (audit or {}).get("rows", [])
        if r["mode"] == mode and not r["known_noise"] and np.isclose(r["sigma"], sigma)
    ]
    return f"{rows[0]['lower_bound']:.2f} <= {rows[0]['accountant_epsilon']:.2f}" if rows else "-"


def privacy_table(cells: list[Cell], out: Path, norm: float, audit: dict | None = None) -> tuple[str, pd.DataFrame]:
    runs = collect(cells, out)
    settings = [_setting(c) for c in cells]
    runs["dp"] = [name for name, _ in settings]
    runs["sigma"] = [sigma for _, sigma in settings]
    eps, median = [], []
    for c in cells:
        path = out / "runs" / c.key / "summary.json"
        privacy = json.loads(path.read_text()).get("privacy") if path.is_file() else None
        eps.append(privacy["epsilon"] if privacy else np.nan)
        median.append((privacy or {}).get("epsilon_median_client", np.nan))
    runs["epsilon"], runs["epsilon_median_client"] = eps, median
    ok = runs[runs["status"] == "ok"]
    lines = [
        "| setting | noise multiplier | seeds | epsilon (delta 1e-5) | one release: audited lower bound <= "
        "accountant | audio top-1 (best dev) | AV top-1 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (mode, sigma), g in ok.groupby(["dp", "sigma"], dropna=False, sort=False):
        top = _cell(g, "best_dev_", len(g)).split(" / ")[0]
        av = 100 * pd.to_numeric(g["best_dev_av_top1"], errors="coerce")
        if "DP" not in mode and mode not in ("central", "local"):
            epsilon = "inf (no DP)"
        elif "local" in mode:
            epsilon = f"{g['epsilon'].mean():.1f} worst client, {g['epsilon_median_client'].mean():.1f} median"
        else:
            epsilon = f"{g['epsilon'].mean():.1f}"
        audited = audit_cell(audit, mode, sigma) if mode in ("central", "local") else "-"
        lines.append(
            f"| {mode} | {'-' if np.isnan(sigma) else f'{sigma:g}'} | {len(g)} | {epsilon} | {audited} | {top} | "
            f"{av.mean():.1f}{f' +- {av.std(ddof=0):.1f}' if len(av) > 1 else ''} |"
        )
    lines += [
        "",
        f"ModalityMirror, best-dev top-1 in % (mean +- std over seeds). Clipping norm C = {norm:g}, the median "
        f"update norm of the clean seed-{cells[0].seed} run (choosing C from a non-private run is the usual "
        "shortcut; it is not itself accounted). Noise from the operating system's entropy, clients drawn from it "
        "too (not repeatable: another run of a cell gives other digits). Central: clients drawn by Poisson sampling "
        "(each with q = clients-per-round / eligible), each parameter group's clipped sum plus noise sigma x C "
        "divided by its expected count of contributors, epsilon of the Poisson-subsampled Gaussian over the rounds "
        "(add-remove); local: each client clips its update to C and adds sigma x 2 C (dp-neighbouring 'replace'), "
        "epsilon of the Gaussian composed over the rounds a client was drawn in, against the server (no "
        "amplification), for the client drawn most and the median one; secure aggregation: SecAgg+, the server sees "
        "only sums of groups with at least secure-min-clients contributors (dp-accounting's RDP accountant, "
        "mirror_app/core/privacy.py). One release: the audit (`python -m mirror_app.studies.audit`, "
        "[audit.md](audit.md)) of one round's release at this noise multiplier (central: 10 of 100 clients, C = 1): "
        "the empirical lower bound on its epsilon, which must stay at or below the accountant's.",
    ]
    lines += chance_note(cells, out, ok)
    lines += secure_against_clean(cells, out, runs)
    return "\n".join(lines) + "\n", runs


def chance_note(cells: list[Cell], out: Path, ok: pd.DataFrame) -> list[str]:
    """Say which DP settings leave the audio model at chance (1 / the classes in the clean run's F1 record)."""
    f1 = out / "runs" / cells[0].key / "per_class_f1.csv"
    if not f1.is_file() or ok.empty:
        return []
    chance = 100 / pd.read_csv(f1)["class"].nunique()
    dp = ok[ok["dp"].isin(["central", "local"]) | ok["dp"].str.contains("DP", regex=False)]
    audio = 100 * pd.to_numeric(dp["best_dev_audio_top1"], errors="coerce")
    near = audio.groupby([dp["dp"], dp["sigma"]], sort=False).mean()
    if near.empty:
        return []
    at_chance = [f"{mode} sigma {sigma:g}" for (mode, sigma), v in near.items() if v < chance + 3]
    return [
        "",
        f"Chance is {chance:.0f} % ({100 / chance:.0f} classes). "
        + (
            f"{len(at_chance)} of the {len(near)} DP settings leave the audio model within 3 points of chance "
            f"({', '.join(at_chance)}). In closed form: the noise added to a group's mean has norm about sigma x C x "
            "sqrt(d) / n (d the group's parameters, tens of thousands here; n its expected contributors, about 3 "
            "audio-only clients a round for the audio head in phase 1), while the clipped mean's norm is at most C. "
            "These are the privacy costs at this federation's size (10 clients a round), not a tuned result; only "
            "more clients a round shrink the noise (the table below)."
            if at_chance
            else "Every DP setting stays more than 3 points above chance."
        ),
    ]


def secure_against_clean(cells: list[Cell], out: Path, runs: pd.DataFrame) -> list[str]:
    """Secure aggregation alone against the clean run of the same seed, evaluation by evaluation: the largest gap
    in audio and AV test top-1 (SecAgg+ should change nothing but its quantisation)."""
    status = dict(zip(runs["key"], runs["status"]))
    gaps = []
    for secure in cells:
        if secure.tag != "secagg" or status.get(secure.key) != "ok":
            continue
        clean = next((c for c in cells if c.tag == "nodp" and c.seed == secure.seed), None)
        if clean is None or status.get(clean.key) != "ok":
            continue
        a = pd.read_csv(out / "runs" / clean.key / "metrics.csv").set_index("round")
        b = pd.read_csv(out / "runs" / secure.key / "metrics.csv").set_index("round")
        both = a.index.intersection(b.index)
        audio = (a.loc[both, "audio_top1"] - b.loc[both, "audio_top1"]).abs().max()
        av = (a.loc[both, "av_top1"] - b.loc[both, "av_top1"]).abs().max()
        rounds = b[b.index > 0]
        skipped = pd.to_numeric(rounds.get("secagg_skipped", pd.Series(dtype=float)), errors="coerce").fillna(0)
        gaps.append((secure.seed, len(both), 100 * audio, 100 * av, float((skipped > 0).mean()), float(skipped.mean())))
    if not gaps:
        return []
    seeds = ", ".join(str(g[0]) for g in gaps)
    config = out / "runs" / next(c.key for c in cells if c.tag == "secagg") / "config.json"
    minimum = json.loads(config.read_text()).get("secure-min-clients", "?") if config.is_file() else "?"
    share, per_round = max(g[4] for g in gaps), max(g[5] for g in gaps)
    return [
        "",
        f"Secure aggregation against the clean run of the same seed (seed{'s' if len(gaps) > 1 else ''} {seeds}), "
        f"evaluation by evaluation ({min(g[1] for g in gaps)} evaluations or more): the audio top-1 within "
        f"{max(g[2] for g in gaps):.1f} points and the AV top-1 within {max(g[3] for g in gaps):.1f} at every one. "
        "SecAgg+ changes the aggregate by its quantisation and by what it must leave out: a group with fewer than "
        f"secure-min-clients = {minimum} contributors in a round is not updated (its sum would show too few clients' "
        f"updates). In up to {100 * share:.0f} % of the evaluated rounds some group was left out ({per_round:.1f} "
        "groups a round on average, in the worst seed): with 10 clients a round at missing rate 0.3, the audio-only "
        "clients that alone train the audio head in phase 1 are about 3 a round. Where the best-dev rows differ, "
        "that and near-tied dev accuracies picked another round.",
    ]


def privacy_figure(runs: pd.DataFrame, out: Path) -> Path | None:
    ok = runs[(runs["status"] == "ok") & runs["dp"].isin(["central", "local"])]
    if ok.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clean = runs[(runs["status"] == "ok") & (runs["dp"] == "off")]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for mode, marker in (("central", "o"), ("local", "s")):
        g = ok[ok["dp"] == mode].groupby("sigma")
        for metric, style in (("best_dev_audio_top1", "-"), ("best_dev_av_top1", "--")):
            mean = g.agg({"epsilon": "mean", metric: "mean"}).sort_values("epsilon")
            label = f"{mode} DP, {'audio' if 'audio' in metric else 'AV'}"
            ax.plot(mean["epsilon"], 100 * mean[metric], style, marker=marker, label=label)
    for metric, style in (("best_dev_audio_top1", ":"), ("best_dev_av_top1", "-.")):
        if len(clean):
            ax.axhline(100 * clean[metric].mean(), ls=style, color="grey", label=f"no DP, {metric.split('_')[2]}")
    ax.set(xscale="log", xlabel="epsilon (delta 1e-5; local: worst client)", ylabel="top-1 at the best dev round (%)")
    ax.legend(fontsize=7)
    return _save(fig, out / "privacy.png")


BUDGET_CLIENTS = (100, 300, 1_000, 3_000, 10_000, 30_000, 100_000)
BUDGET_PER_ROUND = (10, 100)
BUDGET_SIGMAS = (1.0, 2.0, 3.0)
BUDGET_TARGET = 8.0


def budget_frame(run_config: str) -> pd.DataFrame:
    """Central DP's epsilon for the run config's schedule (ModalityMirror's phases, missing rate, delta) at every
    federation size, clients per round and noise multiplier of the grid: what the accountant answers without
    training (``privacy_plan``, as a run's ledger records it)."""
    from mirror_app.core.privacy import spent
    from mirror_app.deploy.preflight import pairs_to_values
    from strategies import resolve_config

    rows = []
    for k in BUDGET_PER_ROUND:
        for sigma in BUDGET_SIGMAS:
            pairs = parse_pairs(run_config) | {
                "dp": "'central'",
                "dp-clipping-norm": "1.0",
                "dp-noise-multiplier": str(sigma),
                "clients-per-round": str(k),
            }
            cfg, cls = resolve_config(pairs_to_values(pairs))
            for n in BUDGET_CLIENTS:
                if n < k:
                    continue
                plan = cls.privacy_plan(cfg, n)
                rows.append(
                    {
                        "clients_per_round": k,
                        "sigma": sigma,
                        "clients": n,
                        "rounds": len(plan),
                        "epsilon": spent(plan, cfg.dp_delta, cfg.dp_sampling),
                        "delta": cfg.dp_delta,
                    }
                )
    return pd.DataFrame(rows)


def budget_table(frame: pd.DataFrame) -> str:
    """The smallest federation of the grid at which central DP spends at most BUDGET_TARGET, per setting."""
    lines = [
        "| clients per round | noise multiplier | epsilon at 100 clients | smallest federation with epsilon <= 8 |",
        "| --- | --- | --- | --- |",
    ]
    for (k, sigma), g in frame.groupby(["clients_per_round", "sigma"]):
        at100 = g[g["clients"] == 100]["epsilon"]
        fits = g[g["epsilon"] <= BUDGET_TARGET]["clients"]
        lines.append(
            f"| {k} | {sigma:g} | {f'{at100.iloc[0]:.1f}' if len(at100) else 'n/a'} | "
            f"{f'{int(fits.min()):,}' if len(fits) else f'more than {BUDGET_CLIENTS[-1]:,}'} |"
        )
    rounds = int(frame["rounds"].iloc[0]) if len(frame) else 0
    return "\n".join(lines) + (
        f"\n\nCentral DP, the run config's schedule ({rounds} rounds), delta {frame['delta'].iloc[0]:g}: epsilon of "
        "the Poisson-subsampled Gaussian (secret draws), from dp-accounting's RDP accountant, no training. The noise "
        "in the aggregate is sigma x C / (clients per round): only more clients per round shrink it, and only a "
        "larger federation then keeps the sampling rate, and epsilon, down.\n"
    )


def budget_figure(frame: pd.DataFrame, out: Path) -> Path | None:
    if frame.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for (k, sigma), g in frame.groupby(["clients_per_round", "sigma"]):
        ax.plot(
            g["clients"],
            g["epsilon"],
            "-o" if k == BUDGET_PER_ROUND[0] else "--s",
            label=f"{k} a round, sigma {sigma:g}",
        )
    ax.axhline(BUDGET_TARGET, color="grey", ls=":", label=f"epsilon {BUDGET_TARGET:g}")
    ax.set(xscale="log", yscale="log", xlabel="clients in the federation", ylabel="epsilon after the schedule")
    ax.legend(fontsize=7)
    return _save(fig, out / "privacy_budget.png")
