"""ServerApp: validates the run config, prepares the dataset, builds the strategy."""

from __future__ import annotations

import time
from logging import INFO

import torch
from flwr.common import Context, log
from flwr.server import ServerApp, ServerAppComponents, ServerConfig

from data import load_dataset
from mirror_app.config import RunConfig
from mirror_app.models import build_model, initial_model, set_groups
from mirror_app.results import RunRecorder, load_checkpoint, load_resume_state
from mirror_app.training import evaluate
from strategies import resolve_strategy


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run config 'device' = 'cuda' but no CUDA device is available; use 'cpu' or 'auto'")
    return torch.device(name)


class Evaluator:
    """Server-side evaluation of the audio and audiovisual models on the held-out test split and, when
    ``dev-fraction`` > 0, on the server-held dev split (carved from train, never given to a client), which
    picks the best-dev round of ``summary.json`` without looking at test."""

    def __init__(self, model, cache, device: torch.device):
        self.model = model.to(device)
        self.cache = cache
        self.indices = cache.indices("test")
        self.dev = cache.indices("dev")
        self.device = device

    def __call__(self, audio_state: dict, av_state: dict) -> dict:
        set_groups(self.model, audio_state)
        out = evaluate(self.model, self.cache, self.indices, device=self.device, parts=("audio",))
        if self.dev.size:
            dev = evaluate(self.model, self.cache, self.dev, device=self.device, parts=("audio",))
            out |= {f"dev_{k}": dev[k] for k in ("audio_top1", "audio_top5", "audio_macro_f1")}
        set_groups(self.model, av_state)
        out |= evaluate(self.model, self.cache, self.indices, device=self.device, parts=("av",))
        if self.dev.size:
            dev = evaluate(self.model, self.cache, self.dev, device=self.device, parts=("av",))
            out["dev_av_top1"] = dev["av_top1"]
        return out


def make_components(context: Context) -> ServerAppComponents:
    cfg = RunConfig.from_context(context)  # one clear error for a bad config, before any work
    out_root = cfg.check_output_dir()
    saved = load_resume_state(cfg.resolve(cfg.resume), cfg.to_dict()) if cfg.resume else None
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    cache = load_dataset(cfg.dataset, cfg.data_path, cfg.fold, cfg.dev_fraction, cfg.seed)
    log(INFO, "dataset %s: %d samples, %d classes, fold %d: %d train / %d dev / %d test (%s, %.1f s)", cfg.dataset,
        len(cache), cache.num_classes, cache.fold, cache.indices("train").size, cache.indices("dev").size,
        cache.indices("test").size, cache.path, time.perf_counter() - t0)
    if cache.indices("dev").size:
        log(INFO, "evaluation: test and server-held dev split every %d round(s); summary.json reports the last "
            "round, the mean of the last 5 and the test metrics at the round with the best dev audio top-1",
            cfg.eval_every)
    else:
        log(INFO, "evaluation: test split only (dev-fraction = %g gives no dev clips): summary.json has no best-dev "
            "round", cfg.dev_fraction)
    # the server's initial weights (pretrained files included); clients receive them with round 1
    model = initial_model(cache.num_classes, cache.audio.shape[1:], cache.video.shape[1:], cfg.audio_backbone,
                          cfg.video_backbone, cfg.embed_dim, cfg.seed, *cfg.pretrained_paths())
    strategy_cls = resolve_strategy(cfg.strategy)
    model = strategy_cls.server_model(model, cfg, cache.classes)
    teacher = None
    if cfg.init_checkpoint:
        state, teacher = load_checkpoint(cfg.resolve(cfg.init_checkpoint))
        groups = strategy_cls.model_groups  # method-specific slots are skipped
        set_groups(model, {g: a for g, a in state.items() if g in groups})
    if saved is None:
        run_name = f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.strategy.rsplit('.', 1)[-1]}-run{context.run_id}"
        recorder = RunRecorder(out_root / run_name, cfg.to_dict(), cache.classes)
    else:
        recorder = RunRecorder.reopen(cfg.resolve(cfg.resume), saved, cache.classes)
        log(INFO, "resuming %s after round %d", recorder.dir, saved["round"])
    log(INFO, "writing results to %s", recorder.dir)
    eval_model = strategy_cls.server_model(build_model(cache.num_classes, cache.audio.shape[1:], cache.video.shape[1:],
                                                       cfg.audio_backbone, cfg.video_backbone, cfg.embed_dim),
                                           cfg, cache.classes)
    strategy = strategy_cls(
        cfg=cfg, model=model, evaluator=Evaluator(eval_model, cache, device), recorder=recorder, teacher=teacher
    )
    if saved is not None:
        strategy.restore(saved["round"], saved["strategy"], saved["seconds"])
    config = ServerConfig(num_rounds=strategy.total_rounds - strategy.round_offset,
                          round_timeout=cfg.round_timeout or None)
    return ServerAppComponents(strategy=strategy, config=config)


app = ServerApp(server_fn=make_components)
