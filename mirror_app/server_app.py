"""ServerApp: validates the run config, loads the dataset, builds the strategy and hands it to Flower."""

from __future__ import annotations

import time
from logging import INFO

from flwr.app import Context
from flwr.common import log
from flwr.server import ServerAppComponents, ServerConfig
from flwr.serverapp import ServerApp

from data import load_dataset
from mirror_app.core.evaluation import Evaluator
from mirror_app.core.groups import set_groups
from mirror_app.core.models import build_model, initial_model
from mirror_app.core.training import resolve_device
from mirror_app.results import RunRecorder, load_checkpoint, load_resume_state
from strategies import resolve_config


def make_components(context: Context) -> ServerAppComponents:
    cfg, strategy_cls = resolve_config(context.run_config)  # one clear error for a bad config, before any work
    out_root = cfg.check_output_dir()
    saved = load_resume_state(cfg.resolve(cfg.resume), cfg.to_dict()) if cfg.resume else None
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    cache = load_dataset(cfg.dataset, cfg.data_path, cfg.fold, cfg.dev_fraction, cfg.seed)
    log(
        INFO,
        "dataset %s: %d samples, %d classes, fold %d: %d train / %d dev / %d test (%s, %.1f s)",
        cfg.dataset,
        len(cache),
        cache.num_classes,
        cache.fold,
        cache.indices("train").size,
        cache.indices("dev").size,
        cache.indices("test").size,
        cache.path,
        time.perf_counter() - t0,
    )
    if cache.indices("dev").size:
        log(
            INFO,
            "evaluation: test and server-held dev split every %d round(s); summary.json reports the last "
            "round, the mean of the last 5 and the test metrics at the round with the best dev audio top-1",
            cfg.eval_every,
        )
    else:
        log(
            INFO,
            "evaluation: test split only (dev-fraction = %g gives no dev clips): summary.json has no best-dev round",
            cfg.dev_fraction,
        )
    shapes = (cache.audio.shape[1:], cache.video.shape[1:])
    # the server's initial weights (pretrained files included); clients receive them with round 1
    model = initial_model(
        cache.num_classes,
        *shapes,
        cfg.audio_backbone,
        cfg.video_backbone,
        cfg.embed_dim,
        cfg.seed,
        *cfg.pretrained_paths(),
    )
    model = strategy_cls.server_model(model, cfg, cache.classes)
    teacher = None
    if cfg.init_checkpoint:
        state, teacher = load_checkpoint(cfg.resolve(cfg.init_checkpoint))
        groups = strategy_cls.model_groups  # method-specific slots are skipped
        set_groups(model, {g: a for g, a in state.items() if g in groups})
    if saved is None:
        run_name = f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.strategy.rsplit('.', 1)[-1]}-run{context.run_id}"
        recorder = RunRecorder(out_root / run_name, cfg.to_dict(), cache.classes, tensorboard=cfg.tensorboard)
    else:
        recorder = RunRecorder.reopen(cfg.resolve(cfg.resume), saved, cache.classes, tensorboard=cfg.tensorboard)
        log(INFO, "resuming %s after round %d", recorder.dir, saved["round"])
    log(INFO, "writing results to %s", recorder.dir)
    eval_model = strategy_cls.server_model(
        build_model(cache.num_classes, *shapes, cfg.audio_backbone, cfg.video_backbone, cfg.embed_dim),
        cfg,
        cache.classes,
    )
    strategy = strategy_cls(
        cfg=cfg, model=model, evaluator=Evaluator(eval_model, cache, device), recorder=recorder, teacher=teacher
    )
    if saved is not None:
        strategy.restore(saved["round"], saved["strategy"], saved["seconds"])
    config = ServerConfig(
        num_rounds=strategy.total_rounds - strategy.round_offset, round_timeout=cfg.round_timeout or None
    )
    return ServerAppComponents(strategy=strategy, config=config)


app = ServerApp(server_fn=make_components)
