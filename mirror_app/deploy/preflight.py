"""What a run checks before Flower starts anything, in a second: run config pairs as Flower's ``--run-config``
takes them (``key=value``, TOML values), the config resolved and validated as the apps will, the dataset, the
output dir, a ``dp-target-epsilon`` against the schedule and the pretrained encoders against the backbones. Each
problem is one line naming the key, the value and what is allowed (``make run``, the sweep, the ablations and
``make deploy-local`` call it)."""

from __future__ import annotations

import re


def with_defaults(run_config: str, defaults: dict[str, str]) -> str:
    """``run_config`` ("key=value ...") preceded by the ``defaults`` it does not set itself.

    Flower refuses a key given twice, so a default is only added when the user left it out.
    """
    given = parse_pairs(run_config)
    return " ".join([f"{k}={v}" for k, v in defaults.items() if k not in given] + [run_config]).strip()


def parse_pairs(run_config: str) -> dict[str, str]:
    """``key=value ...`` (values quoted with ' or " may hold spaces) -> {key: value as written}.

    A key given twice is refused (a ConfigError naming it), as Flower refuses the whole string; where two sources
    of keys meet (a preset, the Makefile's paths, the user's run config), :func:`with_defaults` and
    ``studies.runs.override_pairs`` decide which word counts, each string parsed on its own."""
    pairs: dict[str, str] = {}
    for key, value in re.findall(r"(\S+?)=('[^']*'|\"[^\"]*\"|\S+)", run_config):
        if key in pairs:
            from mirror_app.core.config import ConfigError

            raise ConfigError(f"run config key '{key}' is given twice ({pairs[key]} and {value}): give each key once")
        pairs[key] = value
    return pairs


def pairs_to_values(pairs: dict[str, str]) -> dict:
    """{key: value as written} -> {key: TOML value}, as Flower reads ``--run-config`` pairs; a ValueError
    names a value that is not TOML."""
    import tomllib

    raw: dict = {}
    for key, value in pairs.items():
        if value[:1] in "'\"":
            raw[key] = value.strip("'\"")
            continue
        try:
            raw[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            raise ValueError(f"run config {key}={value} is not a TOML value (quote strings: {key}='...')") from None
    return raw


def check_run(run_config: str, dataset: bool = True, num_clients: int = 0, require_pretrained: bool = False):
    """What a run would check first, in this process and in a second: the run config (pyproject defaults
    plus ``run_config``), the strategy, the output dir and (``dataset``) that the dataset is there and that
    the pretrained encoders fit the run's backbones at its front end (:func:`check_pretrained`); with
    ``num_clients`` known (a simulation's size), that a ``dp-target-epsilon`` holds to the last round; with
    ``require_pretrained`` (a study, whose cells must start from the same encoders), that ``auto`` finds a file.
    Returns the RunConfig; raises ValueError (ConfigError, DatasetNotPrepared, PretrainedError) with a one-line
    reason."""
    from strategies import resolve_config

    cfg, strategy_cls = resolve_config(pairs_to_values(parse_pairs(run_config)))
    if num_clients and cfg.dp != "off" and cfg.dp_target_epsilon > 0:
        check_budget(cfg, strategy_cls.privacy_plan(cfg, num_clients), num_clients)
    if num_clients and cfg.secure_aggregation:  # a group that could never be summed from enough contributors
        from data.partition import AUDIO, AUDIOVISUAL
        from mirror_app.core.config import ConfigError

        audio = int(round(cfg.missing_rate * num_clients))
        problem = strategy_cls.secure_problem(cfg, {AUDIO: audio, AUDIOVISUAL: num_clients - audio})
        if problem:
            raise ConfigError(problem)
    cfg.check_output_dir()
    if dataset:
        try:
            cache = cfg.load_dataset()
        except FileNotFoundError as exc:
            raise ValueError(str(exc)) from None
        if num_clients:  # a simulation of that size: can every client hold clips?
            problem = cfg.federation_problem(cache, num_clients)
            if problem:
                from mirror_app.core.config import ConfigError

                raise ConfigError(problem)
        check_pretrained(cfg, cache, require_pretrained)
    return cfg


def check_budget(cfg, plan: list[tuple[float, float]], num_clients: int) -> float:
    """The epsilon ``plan`` (a method's rounds, ``privacy_plan``) spends; a ConfigError naming the round at which
    it passes ``dp-target-epsilon`` when it does, before the last round."""
    from mirror_app.core.config import ConfigError
    from mirror_app.core.privacy import spent

    sampling = cfg.dp_sampling if cfg.dp == "central" else "poisson"  # local: q = 1, no sampling
    total = spent(plan, cfg.dp_delta, sampling)
    if total <= cfg.dp_target_epsilon:
        return total
    lo, hi = 0, len(plan)  # the first round after which epsilon exceeds the target
    while lo + 1 < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if spent(plan[:mid], cfg.dp_delta, sampling) <= cfg.dp_target_epsilon else (lo, mid)
    raise ConfigError(
        f"run config 'dp-target-epsilon' = {cfg.dp_target_epsilon:g} is exceeded: with {num_clients} clients, "
        f"{cfg.clients_per_round} a round, dp '{cfg.dp}' and dp-noise-multiplier {cfg.dp_noise_multiplier:g}, "
        f"epsilon passes it at round {hi} of {len(plan)} and reaches {total:.2f} (delta {cfg.dp_delta:g}); raise "
        "dp-noise-multiplier, or run fewer rounds or fewer clients per round"
    )


def check_pretrained(cfg, cache, require: bool = False) -> tuple[str, str]:
    """Load the run's pretrained encoders into its backbones at the dataset's front end, as the ServerApp will
    (a named source missing from its library's cache is downloaded now, where the machine is online). A
    mismatch is one line: the file, the key with both shapes, and the fix; with ``require``, so is an ``auto`` that
    finds no file (which a run would take as random weights). Returns the files ("" for none)."""
    from mirror_app.core.models import initial_model
    from mirror_app.core.pretrained import AUTO, PretrainedError, keyed_file

    spec = cache.spec
    try:
        files = cfg.pretrained_files(spec, download=True)
        values = {"audio-pretrained": cfg.audio_pretrained, "video-pretrained": cfg.video_pretrained}
        for (key, value), file in zip(values.items(), files):
            if require and value == AUTO and not file:
                raise PretrainedError(f"run config '{key}' = 'auto' finds no encoder in {cfg.pretrained_dir}")
        model = initial_model(
            cache.num_classes,
            cache.audio.shape[1:],
            cache.video.shape[1:],
            cfg.audio_backbone,
            cfg.video_backbone,
            cfg.embed_dim,
            cfg.seed,
            *files,
            heads=cfg.head_kinds,
        )
    except PretrainedError as exc:
        kind = "video" if "'video-pretrained'" in str(exc) else "audio"
        backbone = cfg.video_backbone if kind == "video" else cfg.audio_backbone
        fitting = keyed_file(cfg.pretrained_dir, kind, backbone, cfg.embed_dim, spec)
        front = (
            f"{spec.num_mel_bins} mel bins x {spec.num_frames} frames" if kind == "audio" else f"{spec.image_size} px"
        )
        raise PretrainedError(
            f"{exc}. Fix: give {'an' if kind == 'audio' else 'a'} {kind} encoder made for {backbone!r} "
            f"at this dataset's front end ({front}); "
            f"`python -m mirror_app.model.pretrain --dataset {cfg.dataset} --data-dir {cfg.data_dir} "
            f"--audio-backbone {cfg.audio_backbone} --video-backbone {cfg.video_backbone} --embed-dim {cfg.embed_dim}` "
            f"writes {fitting}, which {kind}-pretrained='auto' uses; or start from random weights with "
            f"{kind}-pretrained='none'"
        ) from None
    if cfg.init_checkpoint:  # the groups the ServerApp will load that this dual encoder has must fit it
        from mirror_app.core.groups import GROUPS
        from mirror_app.results import apply_checkpoint
        from strategies import resolve_strategy

        groups = tuple(g for g in resolve_strategy(cfg.strategy).model_groups if g in GROUPS)
        apply_checkpoint(model, cfg.resolve(cfg.init_checkpoint), groups)
    return files
