"""Run configuration: every knob is a kebab-case key in ``[tool.flwr.app.config]``.

The defaults live there only (pyproject.toml): ``RunConfig`` has one typed field per key and no default
of its own. ``RunConfig.from_dict`` takes the pyproject defaults, overrides them with the given keys, and
parses and validates the whole config once, so that a wrong value stops the run before any training with
one line naming the key, the value and what is allowed. Which strategy names exist is the registry's
business (``strategies.resolve_config``), above this layer.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .distillation import DIVERGENCES, OBJECTIVES, TEACHERS, DistillSettings
from .privacy import SAMPLINGS

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"  # the app's root, also inside a FAB


class ConfigError(ValueError):
    """A run config value is wrong. The message names the key, the value and what is allowed."""


def _err(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"run config '{key}' = {value!r} is invalid: {allowed}")


AGGREGATORS = ("fedavg", "fedprox", "fedadam", "fedavgm", "fedmedian", "fedtrimmedavg", "krum", "bulyan")
ATTACKS = ("none", "sign-flip", "scale", "gaussian", "label-flip", "inflate-count", "stale")
DP_MODES = ("off", "central", "local")
NEIGHBOURING = ("replace", "add-remove")  # local DP: replace one client's data (sensitivity 2 C) or add/remove it (C)
SECURE_RULES = ("fedavg", "fedprox")  # the aggregators secure aggregation computes (a weighted mean of sums)
SECAGG_MODULUS = 2**32  # SecAgg+'s modulus range (Flower's default): a round's quantised sum must stay below it
SECAGG_MAX_CLIENTS = SECAGG_MODULUS // 2**20 - 1  # the most clients whose 2^20-level values sum below the modulus
CENSUS_MODES = ("auto", "full", "sampled")
SECURE_NOISE_STDS = 5.5  # secure aggregation with local DP: noise standard deviations inside the clipping range
LIST_VALUED = ("eval-missing-video",)  # string keys holding a comma-separated list of numbers (one number is a list)
FULL_CENSUS_UP_TO = 1000  # census 'auto': ask every node first up to this many nodes, learn from the drawn above


@dataclass(frozen=True)
class RunConfig:
    strategy: str
    dataset: str
    embedded_clips_per_class: int
    census: str
    data_dir: str
    output_dir: str
    missing_rate: float
    sample_missing_video: float
    missing_schedule: str
    eval_missing_video: str
    dirichlet_alpha: float
    num_server_rounds: int
    distill_rounds: int
    clients_per_round: int
    local_epochs: int
    batch_size: int
    lr: float
    optimizer: str
    temperature: float
    distill_ce_weight: float
    distill_divergence: str
    distill_objective: str
    distill_teacher: str
    distill_alpha: float
    dkd_alpha: float
    dkd_beta: float
    agreement_tau: float
    distill_audio_only_clients: bool
    av_trains_audio_head: bool
    av_audio_head_weight: float
    audio_backbone: str
    video_backbone: str
    embed_dim: int
    seed: int
    eval_every: int
    device: str
    init_checkpoint: str
    aggregator: str
    mu: float
    server_lr: float
    server_momentum: float
    trim_beta: float
    num_malicious: int
    krum_keep: int
    max_update_norm: float
    max_client_weight: float
    attack: str
    attack_fraction: float
    attack_scale: float
    attack_std: float
    dp: str
    dp_noise_multiplier: float
    dp_clipping_norm: float
    dp_delta: float
    dp_target_epsilon: float
    dp_neighbouring: str
    dp_insecure_seeded_noise: bool
    dp_sampling: str
    secure_aggregation: bool
    secure_min_clients: int
    secagg_max_examples: int
    secagg_clipping_range: float
    secagg_reconstruction_threshold: float
    fold: int
    dev_fraction: float
    audio_pretrained: str
    video_pretrained: str
    lora_rank: int
    align_av_weight: float
    align_anchors: str
    resume: str
    round_timeout: float
    partitioner: str
    restricted_softmax: bool
    classifier: str
    classifier_heads: str
    loss_calibration: str
    fedlc_tau: float
    fedrs_alpha: float
    tensorboard: bool

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RunConfig:
        """Parse a flat kebab-case mapping (a Flower ``context.run_config``, or some keys of one) over the
        defaults of ``[tool.flwr.app.config]``."""
        types = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for key, value in {**defaults(), **raw}.items():
            name = key.replace("-", "_")
            if name not in types:
                known = ", ".join(sorted(f.replace("_", "-") for f in types))
                raise ConfigError(f"run config key '{key}' is unknown; known keys: {known}")
            kwargs[name] = _coerce(key, value, types[name])
        missing = sorted(f.name.replace("_", "-") for f in dataclasses.fields(cls) if f.name not in kwargs)
        if missing:
            raise ConfigError(
                f"run config keys {missing} have no value: add them to [tool.flwr.app.config] in {PYPROJECT}"
            )
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    @classmethod
    def default(cls) -> RunConfig:
        """The config of ``[tool.flwr.app.config]`` as it stands."""
        return cls.from_dict({})

    def load_dataset(self):
        """The run's dataset as the server holds it (``data.load_dataset``: train, the server-held dev split
        carved from it, and test)."""
        from data import load_dataset

        return load_dataset(
            self.dataset, self.data_path, self.fold, self.dev_fraction, self.seed, self.embedded_clips_per_class
        )

    def federation_problem(self, cache, num_partitions: int) -> str:
        """Why ``num_partitions`` simulated clients cannot each hold clips of ``cache``'s training split under this
        run's partitioner ('' when they can; data.partition.federation_problem)."""
        from data.partition import federation_problem

        labels = cache.labels[cache.indices("train")]
        return federation_problem(
            labels, num_partitions, self.partitioner, self.dirichlet_alpha, self.seed, self.dataset
        )

    def partition_args(self, cache_path: str, partition_id: int, num_partitions: int) -> tuple:
        """``data.partition.get_partition``'s arguments for partition ``partition_id`` of this run."""
        return (
            cache_path,
            partition_id,
            num_partitions,
            self.dirichlet_alpha,
            self.missing_rate,
            self.seed,
            self.fold,
            self.dev_fraction,
            self.partitioner,
        )

    def to_dict(self) -> dict[str, Any]:
        return {k.replace("_", "-"): v for k, v in dataclasses.asdict(self).items()}

    # --------------------------------------------------------------- validation
    def validate(self) -> None:
        """Check every value that does not need other parts of the app."""
        from data import DATASETS  # local import: data imports nothing from here

        from .backbones import BACKBONES

        if not self.strategy:
            raise _err("strategy", self.strategy, "a registered method or a dotted class path")
        if self.dataset not in DATASETS:
            raise _err("dataset", self.dataset, f"one of {sorted(DATASETS)}")
        if self.embedded_clips_per_class < 10:
            raise _err("embedded-clips-per-class", self.embedded_clips_per_class, "an integer >= 10")
        if self.census not in CENSUS_MODES:
            raise _err("census", self.census, f"one of {list(CENSUS_MODES)}")
        if not 0.0 <= self.missing_rate < 1.0:
            raise _err("missing-rate", self.missing_rate, "a fraction in [0, 1)")
        self.validate_missingness()
        from data.partition import PARTITIONERS

        if self.partitioner not in PARTITIONERS:
            raise _err("partitioner", self.partitioner, f"one of {list(PARTITIONERS)}")
        if not self.dirichlet_alpha > 0:
            raise _err("dirichlet-alpha", self.dirichlet_alpha, "a number > 0")
        for key in (
            "num-server-rounds",
            "clients-per-round",
            "local-epochs",
            "batch-size",
            "embed-dim",
            "eval-every",
            "lora-rank",
        ):
            value = getattr(self, key.replace("-", "_"))
            if value < 1:
                raise _err(key, value, "an integer >= 1")
        if self.distill_rounds < 0:
            raise _err("distill-rounds", self.distill_rounds, "an integer >= 0")
        if not self.lr > 0:
            raise _err("lr", self.lr, "a number > 0")
        if self.optimizer not in ("adam", "sgd"):
            raise _err("optimizer", self.optimizer, "one of ['adam', 'sgd']")
        if not self.temperature > 0:
            raise _err("temperature", self.temperature, "a number > 0")
        if self.distill_ce_weight < 0:
            raise _err("distill-ce-weight", self.distill_ce_weight, "a number >= 0")
        if self.distill_divergence not in DIVERGENCES:
            raise _err("distill-divergence", self.distill_divergence, f"one of {list(DIVERGENCES)}")
        if self.distill_objective not in OBJECTIVES:
            raise _err("distill-objective", self.distill_objective, f"one of {list(OBJECTIVES)}")
        if self.distill_teacher not in TEACHERS:
            raise _err("distill-teacher", self.distill_teacher, f"one of {list(TEACHERS)}")
        if not 0 <= self.distill_alpha <= 1:
            raise _err("distill-alpha", self.distill_alpha, "a fraction in [0, 1] (the distillation term's share)")
        for key in ("dkd-alpha", "dkd-beta"):
            if getattr(self, key.replace("-", "_")) < 0:
                raise _err(key, getattr(self, key.replace("-", "_")), "a number >= 0")
        if not -1 <= self.agreement_tau < 1:
            raise _err("agreement-tau", self.agreement_tau, "a number in [-1, 1) (Kendall's tau)")
        if not self.av_audio_head_weight > 0:
            raise _err("av-audio-head-weight", self.av_audio_head_weight, "a number > 0")
        from .backbones import AUDIO_ONLY_BACKBONES

        if self.audio_backbone not in BACKBONES:
            raise _err("audio-backbone", self.audio_backbone, f"one of {sorted(BACKBONES)}")
        video_ok = sorted(set(BACKBONES) - set(AUDIO_ONLY_BACKBONES))
        if self.video_backbone not in video_ok:
            raise _err("video-backbone", self.video_backbone, f"one of {video_ok}")
        if self.fold < 1:
            raise _err("fold", self.fold, "an integer >= 1 (UCF101 has folds 1, 2, 3; other datasets 1)")
        if not 0.0 <= self.dev_fraction < 1.0:
            raise _err("dev-fraction", self.dev_fraction, "a fraction in [0, 1)")
        from .pretrained import source_problem

        for key in ("audio-pretrained", "video-pretrained"):
            value = getattr(self, key.replace("-", "_"))
            problem = source_problem(value)
            if problem:
                raise _err(key, value, problem)
        if self.device not in ("cpu", "cuda", "auto"):
            raise _err("device", self.device, "one of ['auto', 'cpu', 'cuda']")
        if self.aggregator not in AGGREGATORS:
            raise _err("aggregator", self.aggregator, f"one of {list(AGGREGATORS)}")
        if self.mu < 0:
            raise _err("mu", self.mu, "a number >= 0")
        if self.aggregator == "fedprox" and self.mu == 0:
            raise _err("mu", self.mu, "a number > 0 with aggregator 'fedprox' (mu = 0 is FedAvg)")
        if not self.server_lr > 0:
            raise _err("server-lr", self.server_lr, "a number > 0")
        if not 0 <= self.server_momentum < 1:
            raise _err("server-momentum", self.server_momentum, "a number in [0, 1)")
        self.validate_robustness()
        self.validate_privacy()
        if self.align_av_weight < 0:
            raise _err("align-av-weight", self.align_av_weight, "a number >= 0")
        if self.align_anchors not in ("text", "random", "etf"):
            raise _err("align-anchors", self.align_anchors, "one of ['text', 'random', 'etf']")
        if self.round_timeout < 0:
            raise _err("round-timeout", self.round_timeout, "seconds >= 0 (0: wait for every client)")
        if self.resume and not self.resolve(self.resume).is_dir():
            raise _err("resume", self.resume, "the folder of an interrupted run (under output-dir)")
        if self.seed < 0:
            raise _err("seed", self.seed, "an integer >= 0")
        self.validate_heads()
        if self.init_checkpoint and not self.resolve(self.init_checkpoint).is_file():
            raise _err("init-checkpoint", self.init_checkpoint, "a path to an existing model.pt")

    def validate_heads(self) -> None:
        """The classifier remedies for label skew (core.heads)."""
        from .heads import CALIBRATIONS, CLASSIFIERS, HEADS

        if self.classifier not in CLASSIFIERS:
            raise _err("classifier", self.classifier, f"one of {list(CLASSIFIERS)}")
        named = [h.strip() for h in self.classifier_heads.split(",") if h.strip()]
        if not named or any(h not in HEADS for h in named):
            raise _err("classifier-heads", self.classifier_heads, f"comma-separated names among {list(HEADS)}")
        if self.loss_calibration not in CALIBRATIONS:
            raise _err("loss-calibration", self.loss_calibration, f"one of {list(CALIBRATIONS)}")
        if self.restricted_softmax and self.loss_calibration != "none":
            raise _err(
                "loss-calibration",
                self.loss_calibration,
                "'none' with restricted-softmax (both calibrate the clients' label loss: choose one)",
            )
        if not self.fedlc_tau > 0:
            raise _err("fedlc-tau", self.fedlc_tau, "a number > 0")
        if not 0 <= self.fedrs_alpha <= 1:
            raise _err("fedrs-alpha", self.fedrs_alpha, "a fraction in [0, 1]")

    @property
    def head_kinds(self) -> dict[str, str]:
        """The classifier of the audio head and of the fusion head (``build_model``'s ``heads``)."""
        named = {h.strip() for h in self.classifier_heads.split(",")}
        return {h: (self.classifier if h in named else "linear") for h in ("audio", "fusion")}

    def validate_missingness(self) -> None:
        """Per-sample missing video, the availability schedule and test-time missing video."""
        if not 0.0 <= self.sample_missing_video < 1.0:
            raise _err("sample-missing-video", self.sample_missing_video, "a fraction in [0, 1)")
        from data.partition import audio_only_share, parse_schedule

        rounds = self.num_server_rounds + self.distill_rounds
        try:
            schedule = parse_schedule(self.missing_schedule)
        except ValueError as exc:
            raise _err("missing-schedule", self.missing_schedule, f"'<round>:<+/-share>,...' ({exc})") from None
        for at, _ in schedule:
            if not 1 <= at <= rounds:
                raise _err(
                    "missing-schedule", self.missing_schedule, f"rounds in [1, {rounds}] (round {at} is past the run)"
                )
            share = audio_only_share(self.missing_rate, schedule, at)
            if not self.missing_rate <= share < 1:
                raise _err(
                    "missing-schedule",
                    self.missing_schedule,
                    f"an audio-only share in [missing-rate {self.missing_rate:g}, 1) at every round (round {at} "
                    f"makes it {share:g}; clients that never had video cannot get one)",
                )
        for part in (p.strip() for p in self.eval_missing_video.split(",") if p.strip()):
            try:
                ok = 0 < float(part) <= 1
            except ValueError:
                ok = False
            if not ok:
                raise _err("eval-missing-video", self.eval_missing_video, "comma-separated fractions in (0, 1]")

    @property
    def distill_settings(self) -> DistillSettings:
        """The knobs the distillation objectives read (:mod:`.distillation`)."""
        return DistillSettings(
            temperature=self.temperature,
            divergence=self.distill_divergence,
            ce_weight=self.distill_ce_weight,
            alpha=self.distill_alpha,
            dkd_alpha=self.dkd_alpha,
            dkd_beta=self.dkd_beta,
            tau=self.agreement_tau,
        )

    @property
    def secure_clipping_range(self) -> float:
        """The range SecAgg+ clips each sent value to: ``secagg-clipping-range``, raised under local DP to C + 5.5 x
        sigma x the sensitivity, so that a clipped update coordinate (at most C) plus its noise is clipped in fewer
        than one value in a million (the normal tail beyond 5.5 standard deviations is 4e-8)."""
        if self.dp != "local":
            return self.secagg_clipping_range
        from .privacy import sensitivity

        bound = self.dp_clipping_norm + SECURE_NOISE_STDS * self.dp_noise_multiplier * sensitivity(
            self.dp_clipping_norm, self.dp_neighbouring
        )
        return max(self.secagg_clipping_range, bound)

    @property
    def eval_missing_shares(self) -> tuple[float, ...]:
        """``eval-missing-video`` as numbers: the test-time shares of clips without video."""
        return tuple(float(p) for p in self.eval_missing_video.split(",") if p.strip())

    def validate_robustness(self) -> None:
        """Robust aggregation and simulated attacks (issue 'Clients that lie')."""
        if not 0 <= self.trim_beta < 0.5:
            raise _err("trim-beta", self.trim_beta, "a fraction in [0, 0.5) cut from each end")
        if self.num_malicious < 0:
            raise _err("num-malicious", self.num_malicious, "an integer >= 0")
        if self.krum_keep < 0:
            raise _err("krum-keep", self.krum_keep, "an integer >= 0 (0: Krum picks one update)")
        k, f = self.clients_per_round, self.num_malicious
        if self.aggregator == "krum" and not k > 2 * f + 2:
            raise _err(
                "num-malicious",
                f,
                f"at most {max((k - 3) // 2, 0)} with aggregator 'krum' and {k} clients per round "
                "(Krum needs more than 2 f + 2 updates)",
            )
        if self.aggregator == "krum" and self.krum_keep > k:
            raise _err("krum-keep", self.krum_keep, f"at most clients-per-round ({k})")
        if self.aggregator == "bulyan" and not k >= 4 * f + 3:
            raise _err(
                "num-malicious",
                f,
                f"at most {max((k - 3) // 4, 0)} with aggregator 'bulyan' and {k} clients per round "
                "(Bulyan needs at least 4 f + 3 updates)",
            )
        if self.max_update_norm < 0:
            raise _err("max-update-norm", self.max_update_norm, "a number >= 0 (0: off)")
        if not 0 < self.max_client_weight <= 1:
            raise _err("max-client-weight", self.max_client_weight, "a fraction in (0, 1] (1: off)")
        if self.attack not in ATTACKS:
            raise _err("attack", self.attack, f"one of {list(ATTACKS)}")
        if not 0 <= self.attack_fraction < 1:
            raise _err("attack-fraction", self.attack_fraction, "a fraction in [0, 1)")
        if self.attack_fraction > 0 and self.attack == "none":
            raise _err("attack-fraction", self.attack_fraction, "0 with attack 'none' (choose an attack)")
        if not self.attack_scale > 0:
            raise _err("attack-scale", self.attack_scale, "a number > 0")
        if not self.attack_std > 0:
            raise _err("attack-std", self.attack_std, "a number > 0")

    def validate_privacy(self) -> None:
        """Differential privacy settings."""
        if self.dp not in DP_MODES:
            raise _err("dp", self.dp, f"one of {list(DP_MODES)}")
        if self.dp_clipping_norm < 0:
            raise _err("dp-clipping-norm", self.dp_clipping_norm, "a number > 0")
        if self.dp != "off" and self.dp_clipping_norm <= 0:
            raise _err("dp-clipping-norm", self.dp_clipping_norm, f"a number > 0 with dp {self.dp!r}")
        if not self.dp_noise_multiplier > 0:
            raise _err("dp-noise-multiplier", self.dp_noise_multiplier, "a number > 0")
        if not 0 < self.dp_delta < 1:
            raise _err("dp-delta", self.dp_delta, "a number in (0, 1)")
        if self.dp_target_epsilon < 0:
            raise _err("dp-target-epsilon", self.dp_target_epsilon, "a number >= 0 (0: no target)")
        if self.dp == "central" and self.aggregator not in ("fedavg", "fedprox"):
            raise _err(
                "aggregator", self.aggregator, "fedavg or fedprox with dp 'central' (Flower's DP wrapper averages)"
            )
        if self.dp == "central" and self.max_update_norm > 0:
            raise _err(
                "max-update-norm",
                self.max_update_norm,
                "0 with dp 'central' (a clip relative to the round's median norm rescales every update when one client "
                "leaves, so C / n is no longer the sensitivity)",
            )
        if self.dp_neighbouring not in NEIGHBOURING:
            raise _err("dp-neighbouring", self.dp_neighbouring, f"one of {list(NEIGHBOURING)}")
        if self.dp_sampling not in SAMPLINGS:
            raise _err("dp-sampling", self.dp_sampling, f"one of {list(SAMPLINGS)}")
        if self.dp == "central" and self.census == "sampled":
            raise _err(
                "census",
                self.census,
                "'full' or 'auto' with dp 'central' (the expected count of each group's contributors needs every "
                "client's modality before the first draw)",
            )
        self.validate_secure_aggregation()

    def validate_secure_aggregation(self) -> None:
        """Secure aggregation (SecAgg+): the server sees only sums, so nothing that needs one client's update."""
        if not self.secure_aggregation:
            return
        needs = {
            "aggregator": (
                self.aggregator not in SECURE_RULES,
                f"one of {list(SECURE_RULES)} with secure-aggregation "
                "(robust rules and server optimisers need each client's update; the server sees only sums)",
            ),
            "dp": (
                self.dp == "central",
                "'off' or 'local' with secure-aggregation (central DP clips each client's "
                "update on the server, which sees only sums; local DP noises updates before they are summed)",
            ),
            "max-update-norm": (self.max_update_norm > 0, "0 with secure-aggregation (it needs each update's norm)"),
            "max-client-weight": (
                self.max_client_weight < 1,
                "1 with secure-aggregation (it needs each client's example count; the server sees only their sum)",
            ),
        }
        for key, (wrong, allowed) in needs.items():
            if wrong:
                raise _err(key, getattr(self, key.replace("-", "_")), allowed)
        k = self.clients_per_round
        if not 2 <= k <= SECAGG_MAX_CLIENTS:
            raise _err(
                "clients-per-round",
                k,
                f"an integer in [2, {SECAGG_MAX_CLIENTS}] with secure-aggregation (SecAgg+ sums at least two clients' "
                "vectors, each quantised to 2^20 levels or more, within its 2^32 modulus)",
            )
        if not 2 <= self.secure_min_clients <= k:
            raise _err(
                "secure-min-clients",
                self.secure_min_clients,
                f"an integer in [2, clients-per-round {k}] with secure-aggregation (a group summed from one client "
                "is that client's update; with more than clients-per-round no group is ever updated)",
            )
        if self.secagg_max_examples < 1:
            raise _err("secagg-max-examples", self.secagg_max_examples, "an integer >= 1")
        if not self.secagg_clipping_range > 0:
            raise _err("secagg-clipping-range", self.secagg_clipping_range, "a number > 0")
        if not 0 < self.secagg_reconstruction_threshold <= 1:
            raise _err("secagg-reconstruction-threshold", self.secagg_reconstruction_threshold, "a fraction in (0, 1]")

    def check_output_dir(self) -> Path:
        """Create the output dir (if needed) and check it is writable."""
        out = self.resolve(self.output_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _err("output-dir", self.output_dir, f"a writable directory ({exc.strerror})") from None
        if not os.access(out, os.W_OK | os.X_OK):
            raise _err("output-dir", self.output_dir, "a writable directory (permission denied)")
        return out

    @staticmethod
    def resolve(path: str) -> Path:
        return Path(path).expanduser().resolve()

    @property
    def pretrained_dir(self) -> Path:
        """Where ``make pretrain`` writes encoders and ``auto`` looks for them: ``<data-dir>/pretrained``."""
        return self.data_path / "pretrained"

    def pretrained_files(self, spec, download: bool = False) -> tuple[str, str]:
        """The files ``audio-pretrained`` and ``video-pretrained`` stand for with the dataset's front end ``spec``
        (a data.features.FeatureSpec), "" for random weights (:func:`.pretrained.resolve`; ``download``: fetch a
        named source missing from its library's cache, as the pre-run check does)."""
        from .pretrained import resolve

        files = (
            resolve(value, key, kind, backbone, self.embed_dim, spec, self.pretrained_dir, download)
            for value, key, kind, backbone in (
                (self.audio_pretrained, "audio-pretrained", "audio", self.audio_backbone),
                (self.video_pretrained, "video-pretrained", "video", self.video_backbone),
            )
        )
        audio, video = (str(f) if f else "" for f in files)
        return audio, video

    def starting_point(self, spec, files: tuple[str, str]) -> str:
        """One line: which weights each encoder starts from, given ``pretrained_files``' answer ``files``."""
        parts = []
        for kind, backbone, value, file in (
            ("audio", self.audio_backbone, self.audio_pretrained, files[0]),
            ("video", self.video_backbone, self.video_pretrained, files[1]),
        ):
            if file:
                parts.append(f"{kind} {backbone} from {file}" + (f" ({value})" if value not in (file, "auto") else ""))
            elif value == "auto":
                parts.append(
                    f"{kind} {backbone} from random weights (none built for this front end in {self.pretrained_dir})"
                )
            else:
                parts.append(f"{kind} {backbone} from random weights ({kind}-pretrained = {value!r})")
        front = f"{spec.num_mel_bins} mel bins x {spec.num_frames} frames, {spec.image_size} px"
        return f"initial encoders ({front}): " + "; ".join(parts)

    @property
    def data_path(self) -> Path:
        return self.resolve(self.data_dir)


@lru_cache(maxsize=1)
def _defaults_of(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return dict(tomllib.load(f)["tool"]["flwr"]["app"]["config"])
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the run-config defaults [tool.flwr.app.config] from {path} ({exc})") from None


# keys whose default changed after they were added, and the default each was added with: a run made before the key
# existed ran with that value (not today's default)
BEFORE_KEY = {
    "classifier": "linear",  # the default until the head-drift study made etf the default
    "loss-calibration": "none",  # the default until the head-drift study made fedlc the default
}


def as_recorded(config: dict[str, Any]) -> dict[str, Any]:
    """A run's resolved config (its config.json) with every ``BEFORE_KEY`` key it predates at the value it ran
    with, so that resolving it again (today's defaults filling the keys it lacks) gives the run it was."""
    return BEFORE_KEY | config


def read_config(path: Path) -> dict[str, Any]:
    """A run's or a record's config.json, as the run ran it (:func:`as_recorded`)."""
    import json

    return as_recorded(json.loads(Path(path).read_text()))


def defaults() -> dict[str, Any]:
    """``[tool.flwr.app.config]`` of the app's pyproject.toml: every key and its default, as written."""
    return dict(_defaults_of(PYPROJECT))


def _coerce(key: str, value: Any, kind: type) -> Any:
    """Flower passes TOML values through; accept ints for floats, reject the rest."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise _err(key, value, "true or false")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise _err(key, value, "an integer")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _err(key, value, "a number")
        return float(value)
    if key in LIST_VALUED and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}"  # a number where a comma-separated list is expected: a list of one
    if not isinstance(value, str):
        raise _err(key, value, "a string")
    return value
