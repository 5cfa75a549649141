"""What a strategy reports and does for privacy and secure aggregation, mixed into ``PhasedStrategy``: the DP
budget a run spent and how it was accounted (``privacy_summary``), the SecAgg+ settings it summed under
(``secure_summary``), the fit config that tells clients how to lay their groups out in one vector and which groups
the round does not update for want of contributors (``secure_fields``), and turning SecAgg+'s sum back into
weighted group means (``aggregate_secure``). The noise, the accountant and the vector layout themselves live in
mirror_app/core/privacy.py and mirror_app/core/secure.py."""

from __future__ import annotations

from logging import INFO
from typing import Any

import numpy as np
from flwr.common import FitRes, Scalar, log, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy

from data.partition import AUDIO, AUDIOVISUAL
from mirror_app.core.privacy import central_sensitivity, disclosure, sensitivity
from mirror_app.core.secure import LAYOUT as SECURE_LAYOUT
from mirror_app.core.secure import SKIPPED as SECURE_SKIPPED
from mirror_app.core.secure import clipped_total, decode, layout_text, parse_layout, vector_size

SERVER_SEES = {  # what the server receives of each client, by mode (docs/security.md's table; tests observe it)
    "plain": "its update, example count, reply metrics (loss, timings) and census properties (clips, classes)",
    "central-dp": "the same as plain: the server is trusted; the published model is what DP protects",
    "local-dp": "its clipped and noised update, its modality and partition; no count, metric or census property",
    "secagg": "the sum of the round's weighted updates, per group of at least secure-min-clients contributors; "
    "each client's modality and partition",
    "secagg+local-dp": "the sum of noised updates, per group of at least secure-min-clients contributors; each "
    "client's modality and partition",
}


class Protection:
    """The privacy and secure-aggregation part of a ``PhasedStrategy`` (it holds ``cfg``, ``ledger``, ``state``,
    ``properties`` and the round's secure layout)."""

    cfg: Any
    ledger: Any
    state: dict
    properties: dict
    _secure_layout: Any
    secure_skips: dict[str, int]  # state key -> rounds it was not updated for want of contributors
    secure_clipped: float  # values beyond the clipping range, summed over every round's clients
    secure_values: int  # values the clients sent, summed over the rounds
    secure_halted: int  # rounds whose sum was not unmasked: a group fell below the minimum as clients dropped

    def privacy_summary(self) -> dict | None:
        """The (epsilon, delta) spent by a differentially private run and how it was accounted; None without DP."""
        if self.ledger is None:
            return None
        cfg = self.cfg
        out = {
            "dp": cfg.dp,
            "epsilon": self.ledger.epsilon(),
            "delta": cfg.dp_delta,
            "noise_multiplier": cfg.dp_noise_multiplier,
            "clipping_norm": cfg.dp_clipping_norm,
            "noise": "reproducible from the run seed: no privacy (dp-insecure-seeded-noise)"
            if cfg.dp_insecure_seeded_noise
            else "drawn from the operating system's entropy",
            "server_sees": SERVER_SEES[disclosure(cfg.dp, cfg.secure_aggregation)],
        }
        if cfg.dp == "local":
            counts = sorted(self.ledger.releases.values())
            return out | {
                "epsilon_worst_client": self.ledger.epsilon(),
                "epsilon_median_client": self.ledger.median_client(),
                "releases_worst_client": counts[-1] if counts else 0,
                "releases_median_client": counts[(len(counts) - 1) // 2] if counts else 0,
                "neighbouring": cfg.dp_neighbouring,
                "sensitivity": sensitivity(cfg.dp_clipping_norm, cfg.dp_neighbouring),
                "rounds": self.ledger.local_rounds,
                "accountant": "dp-accounting RDP: the Gaussian mechanism composed over the rounds a client was drawn "
                "in (it may have released a noised update in each), no sampling (the server chooses the clients and "
                "sees every update; mirror_app/core/privacy.py)",
            }
        poisson = cfg.dp_sampling == "poisson"
        return out | {
            "rounds": len(self.ledger.rounds),
            "sampling": "poisson: each eligible client drawn on its own with q = clients-per-round / eligible"
            if poisson
            else "fixed: exactly clients-per-round of the eligible clients, without replacement",
            "neighbouring": "add-remove one client" if poisson else "replace one client's data",
            "sensitivity": central_sensitivity(cfg.dp_clipping_norm, cfg.dp_sampling),
            "denominator": "each group's expected count of contributors (q x the eligible clients that train it)"
            if poisson
            else "each group's contributors",
            "accountant": "dp-accounting RDP, "
            + ("PoissonSampledDpEvent" if poisson else "SampledWithoutReplacementDpEvent (replace-one)")
            + " of the Gaussian of multiplier sigma / sqrt(groups) per round "
            + ("(the draw is secret)" if not cfg.dp_insecure_seeded_noise else "(the draw follows from the seed)")
            + " (mirror_app/core/privacy.py)",
        }

    def secure_summary(self) -> dict | None:
        """How a secure-aggregation run summed its updates (SecAgg+); None without it."""
        cfg = self.cfg
        if not cfg.secure_aggregation:
            return None
        from mirror_app.core.secure import quantization_range

        return {
            "protocol": "SecAgg+ (Flower's SecAggPlusWorkflow and secaggplus_mod): the server saw only sums",
            "server_sees": SERVER_SEES[disclosure(cfg.dp, cfg.secure_aggregation)],
            "clipping_range": cfg.secure_clipping_range,
            "quantization_levels": quantization_range(cfg.clients_per_round),
            "reconstruction_threshold": cfg.secagg_reconstruction_threshold,
            "min_clients": cfg.secure_min_clients,
            "max_examples": cfg.secagg_max_examples,
            "skipped_rounds": dict(self.secure_skips),
            "halted_rounds": self.secure_halted,
            "clipped_values": round(self.secure_clipped),
            "clipped_share": self.secure_clipped / self.secure_values if self.secure_values else 0.0,
        }

    def secure_fields(self, phase: Any, chosen: list[str]) -> dict[str, Scalar]:
        """The fit config of secure aggregation: the round's layout (every group at least ``secure-min-clients`` of
        the drawn clients train, as state keys, and their sizes) and the groups it leaves out for want of
        contributors, which no client's vector carries and the round does not update; ``phase``: the round's
        ``base.Phase``."""
        keys: list[str] = []
        contributors: dict[str, int] = {}
        for modality in (AUDIO, AUDIOVISUAL):
            ins = phase.instruction(modality)
            keys += [ins.slot + g for g in ins.train if ins.slot + g not in keys] if ins else []
        for cid in chosen:
            ins = phase.instruction(self.properties[cid]["modality"])
            for g in ins.train if ins else ():
                contributors[ins.slot + g] = contributors.get(ins.slot + g, 0) + 1
        kept = [k for k in keys if contributors.get(k, 0) >= self.cfg.secure_min_clients]
        skipped = [k for k in keys if 0 < contributors.get(k, 0) < self.cfg.secure_min_clients]
        for k in skipped:
            self.secure_skips[k] = self.secure_skips.get(k, 0) + 1
        if skipped:
            log(
                INFO,
                "secure aggregation: %s not updated this round (fewer than %d contributors: %s)",
                ", ".join(skipped),
                self.cfg.secure_min_clients,
                ", ".join(str(contributors[k]) for k in skipped),
            )
        self._secure_skipped = len(skipped)
        self._secure_phase = phase
        layout = [(k, int(sum(a.size for a in self.state[k]))) for k in kept]
        return {SECURE_LAYOUT: layout_text(layout), SECURE_SKIPPED: ",".join(skipped)}

    def secure_survivors_problem(self, survivors: set[str]) -> str:
        """Why the round's sum must not be unmasked ('' when it may): a client lost after the layout was fixed can
        leave a group of the layout with fewer than ``secure-min-clients`` contributors among ``survivors`` (the
        node ids that sent their masked vectors), and its sum would then be too few clients' updates. The secure
        workflow asks before it unmasks (mirror_app/server_app.py) and halts the round when this says why."""
        phase = getattr(self, "_secure_phase", None)
        if phase is None:
            return ""
        counts: dict[str, int] = {}
        for cid in survivors:
            ins = phase.instruction(self.properties.get(cid, {}).get("modality", ""))
            for g in ins.train if ins else ():
                counts[ins.slot + g] = counts.get(ins.slot + g, 0) + 1
        short = [k for k, _ in parse_layout(str(self._secure_layout)) if counts.get(k, 0) < self.cfg.secure_min_clients]
        if not short:
            return ""
        self.secure_halted += 1
        return (
            f"{', '.join(short)} would be summed from fewer than {self.cfg.secure_min_clients} clients after "
            f"{len(survivors)} of the drawn answered: the round's sum is not unmasked"
        )

    @classmethod
    def secure_problem(cls, cfg: Any, counts: dict[str, int]) -> str:
        """Why some parameter group could never be updated under secure aggregation ('' when every group can):
        ``counts`` holds the clients of each modality; a group trained by fewer clients than ``secure-min-clients``
        (but by some) is never summed from enough of them."""
        if not cfg.secure_aggregation:
            return ""
        for phase, _ in cls.build_phases(cls.__new__(cls), cfg):
            trainers: dict[str, int] = {}
            for modality, n in counts.items():
                ins = phase.instruction(modality)
                for g in ins.train if ins else ():
                    trainers[ins.slot + g] = trainers.get(ins.slot + g, 0) + n
            for key, n in trainers.items():
                if 0 < n < cfg.secure_min_clients:
                    return (
                        f"run config 'secure-min-clients' = {cfg.secure_min_clients} is invalid: in phase "
                        f"{phase.name!r} only {n} client(s) train {key}, which would never be updated (secure "
                        "aggregation releases a group only from that many contributors); lower it, or change "
                        "missing-rate or the federation"
                    )
        return ""

    def aggregate_secure(self, results: list[tuple[ClientProxy, FitRes]]) -> None:
        """Secure aggregation: every reply carries the same vector, SecAgg+'s sum of the clients' vectors divided by
        their number (``mirror_app.core.secure``); each group of the round's layout becomes its weighted mean, and
        the clients' clipped values are counted."""
        if not results:
            return
        vectors = [parameters_to_ndarrays(res.parameters) for _, res in results]
        if any(len(v) != 1 or not np.array_equal(v[0], vectors[0][0]) for v in vectors):
            raise RuntimeError(
                "secure-aggregation: the replies carry different vectors, not one sum: the run must go through "
                "SecAgg+ (the ServerApp's secure workflow and the clients' secaggplus_mod)"
            )
        layout = parse_layout(str(self._secure_layout))
        total = vectors[0][0] * len(results)
        new, _ = decode(total, layout, {k: self.state[k] for k, _ in layout})
        self.state.update(new)
        clipped = max(0.0, clipped_total(total, layout, self.cfg.secure_clipping_range))
        self.secure_clipped += clipped
        self.secure_values += len(results) * (vector_size(layout) - 1)
        self._secure_clipped_round = round(clipped)
