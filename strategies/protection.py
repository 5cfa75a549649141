"""What a strategy reports and does for privacy and secure aggregation, mixed into ``PhasedStrategy``: the DP
budget a run spent and how it was accounted (``privacy_summary``), the SecAgg+ settings it summed under
(``secure_summary``), the fit config that tells clients how to lay their groups out in one vector
(``secure_fields``), and turning SecAgg+'s sum back into weighted group means (``aggregate_secure``). The noise,
the accountant and the vector layout themselves live in mirror_app/core/privacy.py and mirror_app/core/secure.py."""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.common import FitRes, Scalar, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy

from data.partition import AUDIO, AUDIOVISUAL
from mirror_app.core.privacy import sensitivity
from mirror_app.core.secure import LAYOUT as SECURE_LAYOUT
from mirror_app.core.secure import SCALE as SECURE_SCALE
from mirror_app.core.secure import decode, layout_text, parse_layout


class Protection:
    """The privacy and secure-aggregation part of a ``PhasedStrategy`` (it holds ``cfg``, ``ledger``, ``state``,
    ``properties`` and the round's secure layout)."""

    cfg: Any
    ledger: Any
    state: dict
    properties: dict
    _secure_layout: Any

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
                "accountant": "dp-accounting RDP: the Gaussian mechanism composed over the rounds a client released "
                "an update, no sampling (the server chooses the clients and sees every update; "
                "mirror_app/core/privacy.py)",
            }
        return out | {
            "rounds": len(self.ledger.rounds),
            "accountant": "dp-accounting RDP, Poisson-subsampled Gaussian per round, sigma / sqrt(groups) "
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
            "clipping_range": cfg.secagg_clipping_range,
            "quantization_levels": quantization_range(cfg.clients_per_round),
            "reconstruction_threshold": cfg.secagg_reconstruction_threshold,
        }

    def secure_fields(self, phase: Any, chosen: list[str]) -> dict[str, Scalar]:
        """The fit config of secure aggregation: the round's layout (every group a client of this phase trains, as
        state keys, and their sizes) and the example count weights are divided by (the most among the drawn);
        ``phase``: the round's ``base.Phase``."""
        keys: list[str] = []
        for modality in (AUDIO, AUDIOVISUAL):
            ins = phase.instruction(modality)
            keys += [ins.slot + g for g in ins.train if ins.slot + g not in keys] if ins else []
        layout = [(k, int(sum(a.size for a in self.state[k]))) for k in keys]
        scale = max(int(self.properties.get(cid, {}).get("num-examples", 1)) for cid in chosen)
        return {SECURE_LAYOUT: layout_text(layout), SECURE_SCALE: max(scale, 1)}

    def aggregate_secure(self, results: list[tuple[ClientProxy, FitRes]]) -> None:
        """Secure aggregation: every reply carries the same vector, SecAgg+'s sum of the clients' vectors divided by
        their number (``mirror_app.core.secure``); each group some client trained becomes its weighted mean."""
        if not results:
            return
        vectors = [parameters_to_ndarrays(res.parameters) for _, res in results]
        if any(len(v) != 1 or not np.array_equal(v[0], vectors[0][0]) for v in vectors):
            raise RuntimeError(
                "secure-aggregation: the replies carry different vectors, not one sum: the run must go through "
                "SecAgg+ (the ServerApp's secure workflow and the clients' secaggplus_mod)"
            )
        layout = parse_layout(str(self._secure_layout))
        new, _ = decode(vectors[0][0] * len(results), layout, {k: self.state[k] for k, _ in layout})
        self.state.update(new)
