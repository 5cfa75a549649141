"""An audit that can fail: an empirical lower bound on the epsilon of one DP release, against the accountant's.

    python -m mirror_app.studies.audit --records docs/records/privacy    # measure, keep the report as a record
    python -m mirror_app.studies.audit --report-only --records docs/records/privacy

The method of Jagielski et al. (NeurIPS 2020) and Nasr et al. (IEEE S&P 2021): run the release many times in two
neighbouring worlds, decide from each released update which world it came from, and turn the false-positive and
false-negative rates into a bound no (epsilon, delta)-DP mechanism can beat: epsilon >= log((1 - delta - FNR) /
FPR) (and with the rates swapped), each rate at its Clopper-Pearson upper confidence limit. A release whose noise
is what the accountant assumes can never give a bound above the accountant's epsilon (up to the confidence level);
one that leaks more can.

The releases are the run's own functions, never a copy:

* ``central``: one parameter group through :meth:`strategies.aggregation.GroupAggregator.private`, the server's
  central-DP step, under ``dp-sampling = "poisson"``: of ``--clients`` eligible clients each is drawn with q =
  ``--per-round`` / ``--clients``, their updates (of norm C, orthogonal to the canary's direction, so that only the
  canary moves the statistic: the strongest audit) clipped, summed, noised and divided by the expected count. World
  1 adds a canary client, drawn like the others, whose update is C along a fixed direction; world 0 lacks it
  (add-remove). Accountant: one ``PoissonSampledDpEvent`` round.
* ``local``: one client's release through :func:`mirror_app.core.privacy.local_release` with the std
  :class:`clients.mods.GroupLocalDpMod` uses (sigma x 2 C, ``dp-neighbouring = "replace"``): its update is +C along
  the direction in world 1 and -C in world 0 (its data replaced). Accountant: one Gaussian release.

The statistic is the released update's projection onto the direction; the threshold is chosen on the first half of
the trials and the rates are measured on the second half. ``--known-noise`` audits a run whose noise anyone could
recompute (``dp-insecure-seeded-noise``): the auditor regenerates it and subtracts it, as an adversary holding the
run config could, and the bound lands far above the accountant's figure: the audit is able to fail.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

CENTRAL_SIGMAS = (0.5, 1.0, 1.5, 2.0, 3.0)  # the privacy study's central rows, and 0.5
LOCAL_SIGMAS = (0.5, 1.0, 2.0)
DELTA = 1e-5
CONFIDENCE = 0.95
DIM = 64  # values of the audited group
ROUND = 7  # the round number the releases are made at (the seeded noise's context)
KEY = "audio_head"  # the group's name (the seeded noise's context)


# ----------------------------------------------------------------------------------------- the statistics
def clopper_pearson_upper(failures: int, trials: int, alpha: float) -> float:
    """The one-sided (1 - alpha) Clopper-Pearson upper limit of a rate seen ``failures`` times in ``trials``."""
    from scipy.stats import beta

    if failures >= trials:
        return 1.0
    return float(beta.ppf(1 - alpha, failures + 1, trials - failures))


def epsilon_lower_bound(fp: int, negatives: int, fn: int, positives: int, delta: float, confidence: float) -> float:
    """The empirical lower bound on epsilon from ``fp`` false positives among ``negatives`` world-0 trials and
    ``fn`` false negatives among ``positives`` world-1 trials: both rates at their Clopper-Pearson upper limits
    (each at half of ``1 - confidence``), then the larger of log((1 - delta - FNR) / FPR) and
    log((1 - delta - FPR) / FNR); 0 when neither is positive."""
    alpha = (1 - confidence) / 2
    fpr = clopper_pearson_upper(fp, negatives, alpha)
    fnr = clopper_pearson_upper(fn, positives, alpha)
    bounds = [0.0]
    for a, b in ((fnr, fpr), (fpr, fnr)):
        if 1 - delta - a > 0 and b > 0:
            bounds.append(math.log((1 - delta - a) / b))
    return max(bounds)


def best_threshold(zero: np.ndarray, one: np.ndarray, delta: float, confidence: float) -> float:
    """The threshold on the statistic (world 1 above it) that gives the largest bound on these trials."""
    candidates = np.unique(np.concatenate([zero, one]))
    if candidates.size > 400:
        candidates = np.quantile(candidates, np.linspace(0, 1, 400))
    best, at = -1.0, float(candidates[0])
    for t in candidates:
        bound = epsilon_lower_bound(
            int(np.sum(zero > t)), zero.size, int(np.sum(one <= t)), one.size, delta, confidence
        )
        if bound > best:
            best, at = bound, float(t)
    return at


# ---------------------------------------------------------------------------------------------- releases
def _config(mode: str, sigma: float, seeded: bool, clients: int, per_round: int):
    from mirror_app.core.config import RunConfig

    return RunConfig.from_dict(
        {
            "dp": mode,
            "dp-noise-multiplier": sigma,
            "dp-clipping-norm": 1.0,
            "dp-delta": DELTA,
            "dp-sampling": "poisson",
            "dp-neighbouring": "replace",
            "dp-insecure-seeded-noise": seeded,
            "clients-per-round": per_round,
            "seed": 0,
        }
    )


def _orthogonal(rng: np.random.Generator, direction: np.ndarray, norm: float) -> np.ndarray:
    v = rng.normal(size=direction.size)
    v -= v.dot(direction) * direction
    return norm * v / np.linalg.norm(v)


def central_statistics(
    sigma: float, trials: int, clients: int, per_round: int, seeded: bool, subtract: bool, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The projections of ``trials`` central releases in each world (world 0 without the canary, world 1 with it,
    drawn with probability q like every client). ``seeded``: the run's noise follows from its seed
    (``dp-insecure-seeded-noise``); ``subtract``: the auditor regenerates that noise and takes it out."""
    from strategies.aggregation import GroupAggregator

    cfg = _config("central", sigma, seeded, clients, per_round)
    aggregator = GroupAggregator(cfg)
    direction = np.zeros(DIM)
    direction[0] = 1.0
    current = [np.zeros(DIM, dtype=np.float64)]
    others = [_orthogonal(rng, direction, cfg.dp_clipping_norm) for _ in range(clients - 1)]
    q = per_round / clients
    expected = q * clients
    out = []
    for world in (0, 1):
        stats = np.empty(trials)
        for t in range(trials):
            drawn = [[o] for o, coin in zip(others, rng.random(len(others))) if coin < q]
            if world == 1 and rng.random() < q:
                drawn.append([cfg.dp_clipping_norm * direction])
            round_ = ROUND + world * trials + t  # the seeded noise's context: one per release
            released = aggregator.private(KEY, current, [(u, 1) for u in drawn], round_, expected)[0]
            if subtract:  # the adversary holding the run config regenerates the noise and takes it out
                from mirror_app.core.privacy import central_sensitivity
                from strategies.aggregation import noise_generator

                std = sigma * central_sensitivity(cfg.dp_clipping_norm, cfg.dp_sampling)
                released = released - noise_generator(cfg, round_, KEY).normal(0.0, std, DIM) / expected
            stats[t] = released.dot(direction)
        out.append(stats)
    return out[0], out[1]


def local_statistics(sigma: float, trials: int, seeded: bool, subtract: bool) -> tuple[np.ndarray, np.ndarray]:
    """The projections of ``trials`` local releases of one client in each world (its update -C or +C along the
    direction: its data replaced); ``seeded`` and ``subtract`` as :func:`central_statistics`'."""
    from mirror_app.core.privacy import local_release, sensitivity

    cfg = _config("local", sigma, seeded, 10, 10)
    std = sigma * sensitivity(cfg.dp_clipping_norm, cfg.dp_neighbouring)  # what GroupLocalDpMod adds
    direction = np.zeros(DIM)
    direction[0] = 1.0
    out = []
    for world in (0, 1):
        update = [(1 if world else -1) * cfg.dp_clipping_norm * direction]
        stats = np.empty(trials)
        for t in range(trials):
            round_ = ROUND + world * trials + t
            # the generator clients/mods.local_dp_mod makes: the OS's entropy, or with known noise the run's seed
            noise_rng = np.random.default_rng([cfg.seed, round_, 0]) if seeded else np.random.default_rng()
            released = local_release(update, cfg.dp_clipping_norm, std, noise_rng)[0]
            if subtract:
                released = released - np.random.default_rng([cfg.seed, round_, 0]).normal(0.0, std, DIM)
            stats[t] = released.dot(direction)
        out.append(stats)
    return out[0], out[1]


def accountant_epsilon(mode: str, sigma: float, clients: int, per_round: int) -> float:
    """The accountant's epsilon of the audited release: one Poisson-sampled round (central), one Gaussian release
    (local)."""
    from mirror_app.core.privacy import gaussian_epsilon, spent

    if mode == "central":
        return spent([(sigma, clients, per_round)], DELTA, "poisson")
    return gaussian_epsilon(sigma, 1, DELTA)


def audit_setting(
    mode: str,
    sigma: float,
    trials: int,
    clients: int = 100,
    per_round: int = 10,
    known_noise: bool = False,
    seeded: bool = False,
    seed: int | None = None,
) -> dict:
    """One row of the audit: the accountant's epsilon, the empirical lower bound, the rates it came from.
    ``known_noise``: the run's noise follows from its seed and the auditor subtracts it; ``seeded`` alone: the noise
    follows from the seed but the auditor does not use it (an honest audit that repeats digit for digit, with
    ``seed`` for the draws)."""
    rng = np.random.default_rng(seed)
    seeded = seeded or known_noise
    if mode == "central":
        zero, one = central_statistics(sigma, trials, clients, per_round, seeded, known_noise, rng)
    else:
        zero, one = local_statistics(sigma, trials, seeded, known_noise)
    half = trials // 2
    threshold = best_threshold(zero[:half], one[:half], DELTA, CONFIDENCE)
    fp, fn = int(np.sum(zero[half:] > threshold)), int(np.sum(one[half:] <= threshold))
    n = trials - half
    return {
        "mode": mode,
        "sigma": sigma,
        "known_noise": known_noise,
        "trials": trials,
        "clients": clients if mode == "central" else 1,
        "per_round": per_round if mode == "central" else 1,
        "accountant_epsilon": accountant_epsilon(mode, sigma, clients, per_round),
        "lower_bound": epsilon_lower_bound(fp, n, fn, n, DELTA, CONFIDENCE),
        "false_positive_rate": fp / n,
        "false_negative_rate": fn / n,
    }


def run_audit(trials: int, clients: int = 100, per_round: int = 10) -> dict:
    """Every setting: central DP at CENTRAL_SIGMAS, local DP at LOCAL_SIGMAS, and each mode with known noise."""
    started = time.perf_counter()
    rows = [audit_setting("central", s, trials, clients, per_round) for s in CENTRAL_SIGMAS]
    rows += [audit_setting("local", s, trials) for s in LOCAL_SIGMAS]
    # the noise recomputed from the run config and subtracted, where the accountant's epsilon is smallest
    rows += [audit_setting("central", max(CENTRAL_SIGMAS), trials, clients, per_round, known_noise=True)]
    rows += [audit_setting("local", max(LOCAL_SIGMAS), trials, known_noise=True)]
    return {
        "delta": DELTA,
        "confidence": CONFIDENCE,
        "dimension": DIM,
        "rows": rows,
        "seconds": time.perf_counter() - started,
    }


def markdown(report: dict) -> str:
    """The audit's table."""
    lines = [
        "| mode | noise multiplier | noise | trials per world | accountant's epsilon (one release) | audited lower "
        "bound | FPR / FNR at the threshold |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["rows"]:
        noise = "recomputed and subtracted (dp-insecure-seeded-noise)" if r["known_noise"] else "the operating system's"
        where = f"central, q = {r['per_round']}/{r['clients']}" if r["mode"] == "central" else "local"
        lines.append(
            f"| {where} | {r['sigma']:g} | {noise} | {r['trials']} | {r['accountant_epsilon']:.2f} | "
            f"{r['lower_bound']:.2f} | {r['false_positive_rate']:.3f} / {r['false_negative_rate']:.3f} |"
        )
    honest = [r for r in report["rows"] if not r["known_noise"]]
    below = all(r["lower_bound"] <= r["accountant_epsilon"] for r in honest)
    leaky = [r for r in report["rows"] if r["known_noise"]]
    lines += [
        "",
        f"delta {report['delta']:g}; rates on the second half of the trials at the threshold the first half chose; "
        f"Clopper-Pearson limits at {report['confidence']:.0%}. "
        + (
            "Every audited lower bound with the run's own noise is at or below the accountant's epsilon"
            if below
            else "**Some audited lower bound exceeds the accountant's epsilon: the release leaks more than accounted**"
        )
        + (
            "; with the noise recomputed from the run config and subtracted, the bound reaches "
            + " and ".join(f"{r['lower_bound']:.1f} ({r['mode']})" for r in leaky)
            + " against the accountant's "
            + " and ".join(f"{r['accountant_epsilon']:.2f}" for r in leaky)
            + ": the audit detects a release that is not what the accountant assumes."
            if leaky
            else "."
        ),
        "",
        "A lower bound from a few thousand trials cannot exceed about log(trials): it shows the accountant is not "
        "wrong by much where it is small, and says nothing of how tight it is where it is large.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Audit DP releases: empirical lower bounds on epsilon.")
    p.add_argument("--trials", type=int, default=4000, help="releases per world and setting (at least 100)")
    p.add_argument("--records", default="", help="keep the report as a record there (<records>/audit/report.json)")
    p.add_argument("--report-only", action="store_true", help="print the recorded report, measure nothing")
    p.add_argument("--out", default="results/audit", help="where audit.md is written")
    args = p.parse_args(argv)
    if args.trials < 100:
        print(f"audit: --trials {args.trials} is too few: at least 100", file=sys.stderr)
        return 2
    records = Path(args.records) if args.records else None
    if args.report_only:
        path = records / "audit" / "report.json" if records else None
        if path is None or not path.is_file():
            print(f"audit: --report-only needs a recorded report ({path or 'give --records'})", file=sys.stderr)
            return 1
        report = json.loads(path.read_text())
    else:
        report = run_audit(args.trials)
        if records:
            from mirror_app.studies.runs import record_report

            record_report(report, "audit", records)
    text = markdown(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from mirror_app.results import atomic_write

    atomic_write(out / "audit.md", lambda path: path.write_text(text))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
