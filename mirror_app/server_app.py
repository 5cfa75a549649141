"""ServerApp: validates the run config, loads the dataset, builds the strategy and hands it to Flower.

Flower's grids wait for replies by polling: every 3 s when deployed (a SuperLink over the network), every
0.1 s in a simulation. ``PromptGrid`` polls sooner: when deployed from ``POLL_FIRST`` s, growing by half up
to ``POLL_LONGEST`` s (one request per waiting client each time); in a simulation, where a pull is a
look into the process's own state, every ``POLL_FIRST`` s. A round's replies reach the strategy within a
fraction of a second of the last client's answer; everything else is the run's own grid.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from logging import INFO, WARNING
from pathlib import Path

import torch
from flwr.app import Context, Message
from flwr.common import log
from flwr.server import ServerAppComponents, ServerConfig
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.serverapp import Grid, ServerApp

from mirror_app.core.config import ConfigError
from mirror_app.core.evaluation import Evaluator
from mirror_app.core.models import build_model, initial_model
from mirror_app.core.training import resolve_device
from mirror_app.results import STARTUP_ROUND, RunRecorder, apply_checkpoint, load_resume_state
from strategies import resolve_config


def make_components(context: Context) -> ServerAppComponents:
    stamps = [("process-started", _process_started()), ("app-imported", IMPORTED_AT), ("components-start", time.time())]
    cfg, strategy_cls = resolve_config(context.run_config)  # one clear error for a bad config, before any work
    out_root = cfg.check_output_dir()
    saved = load_resume_state(cfg.resolve(cfg.resume), cfg.to_dict()) if cfg.resume else None
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    stamps.append(("config-checked", time.time()))
    cache = cfg.load_dataset()
    stamps.append(("dataset-loaded", time.time()))
    pretrained = cfg.pretrained_files(cache.spec)  # "auto": make pretrain's encoders for this front end, if built
    log(INFO, "%s", cfg.starting_point(cache.spec, pretrained))
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
    log(INFO, "server-side evaluation on %s (%d torch threads)", device, torch.get_num_threads())
    shapes = (cache.audio.shape[1:], cache.video.shape[1:])
    # the server's initial weights (pretrained files included); clients receive them with round 1
    model = initial_model(
        cache.num_classes,
        *shapes,
        cfg.audio_backbone,
        cfg.video_backbone,
        cfg.embed_dim,
        cfg.seed,
        *pretrained,
        heads=cfg.head_kinds,
    )
    model = strategy_cls.server_model(model, cfg, cache.classes)
    teacher = None
    if cfg.init_checkpoint:  # method-specific slots are skipped
        teacher = apply_checkpoint(model, cfg.resolve(cfg.init_checkpoint), tuple(strategy_cls.model_groups))
    if saved is None:
        run_name = f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.strategy.rsplit('.', 1)[-1]}-run{context.run_id}"
        recorder = RunRecorder(out_root / run_name, cfg.to_dict(), cache.classes, tensorboard=cfg.tensorboard)
    else:
        recorder = RunRecorder.reopen(cfg.resolve(cfg.resume), saved, cache.classes, tensorboard=cfg.tensorboard)
        log(INFO, "resuming %s after round %d", recorder.dir, saved["round"])
    log(INFO, "writing results to %s", recorder.dir)
    eval_model = strategy_cls.server_model(
        build_model(
            cache.num_classes, *shapes, cfg.audio_backbone, cfg.video_backbone, cfg.embed_dim, heads=cfg.head_kinds
        ),
        cfg,
        cache.classes,
    )
    strategy = strategy_cls(
        cfg=cfg,
        model=model,
        evaluator=Evaluator(eval_model, cache, device, cfg.eval_missing_shares),
        recorder=recorder,
        teacher=teacher,
    )
    strategy.simulated = SIMULATION.is_set()
    strategy.initial_encoders = {  # what the model card says the encoders started from (file names, no paths)
        kind: f"pretrained: {Path(file).name}" if file else "random weights"
        for kind, file in zip(("audio", "video"), pretrained)
    }
    if cfg.dp != "off" and cfg.dp_insecure_seeded_noise and not strategy.simulated:
        raise ConfigError(
            "run config 'dp-insecure-seeded-noise' = True is invalid in a deployed run: anyone holding the run "
            "config could recompute the noise (it is for simulation studies only)"
        )
    if strategy.simulated:  # simulated nodes split the run's dataset: can every one of them hold clips?
        strategy.federation_check = lambda nodes: cfg.federation_problem(cache, nodes)
    if saved is not None:
        strategy.restore(saved["round"], saved["strategy"], saved["seconds"])
    stamps.append(("strategy-built", time.time()))
    for event, at in stamps:
        recorder.stamp(STARTUP_ROUND, event, at)
    config = ServerConfig(
        num_rounds=strategy.total_rounds - strategy.round_offset, round_timeout=cfg.round_timeout or None
    )
    return ServerAppComponents(strategy=strategy, config=config)


def _process_started() -> float:
    """Wall-clock time this process started (the ServerApp's process, launched by Flower)."""
    import psutil

    return float(psutil.Process().create_time())


POLL_FIRST, POLL_LONGEST = 0.02, 0.5  # seconds between pulls for replies: first, and at most


class PromptGrid(Grid):
    """The run's grid, with a ``send_and_receive`` that looks for replies sooner than Flower's."""

    def __init__(self, grid: Grid, first: float = POLL_FIRST, longest: float = POLL_LONGEST):
        self.grid, self.first, self.longest = grid, first, longest
        if getattr(grid, "pull_interval", None) is not None:  # Flower's in-memory grid (simulation)
            self.longest = first

    def set_run(self, run) -> None:
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, *args, **kwargs) -> Message:
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self):
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push ``messages``, then pull their replies until all are in or ``timeout`` s passed (as Flower's)."""
        waiting = set(self.push_messages(messages))
        end = time.monotonic() + (timeout or 0.0)
        replies: list[Message] = []
        pause = self.first
        while waiting and (timeout is None or time.monotonic() < end):
            got = list(self.pull_messages(waiting))
            replies += got
            waiting -= {m.metadata.reply_to_message_id for m in got}
            if waiting:
                time.sleep(pause if timeout is None else max(0.0, min(pause, end - time.monotonic())))
                pause = min(pause * 1.5, self.longest)
        return replies


class MirrorServerApp(ServerApp):
    """Flower's ServerApp (compatibility mode: ``server_fn`` and a ``flwr.server.strategy`` strategy), run on a
    :class:`PromptGrid`. With run config ``secure-aggregation`` the same strategy runs in Flower's workflows
    instead: ``DefaultWorkflow`` with ``SecAggPlusWorkflow`` as its fit workflow, so that each round's replies
    reach the strategy only as their sum."""

    def __call__(self, grid: Grid, context: Context) -> None:
        if getattr(grid, "pull_interval", None) is not None:  # Flower's in-memory grid: a simulation
            SIMULATION.set()
        if context is not None and context.run_config.get("secure-aggregation") is True:
            return secure_main(PromptGrid(grid), context)
        super().__call__(PromptGrid(grid), context)


class MinimumWorkflow(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow, except that it does not unmask a round's sum when the clients lost since the layout
    was fixed leave a group with fewer than ``secure-min-clients`` contributors (the strategy's
    ``secure_survivors_problem``): the round is halted, and the server never learns that sum."""

    def unmask_stage(self, grid, context, state) -> bool:
        problem = context.strategy.secure_survivors_problem({str(n) for n in state.active_node_ids})
        if problem:
            log(WARNING, "secure aggregation: %s", problem)
            return False
        return super().unmask_stage(grid, context, state)


def secure_main(grid: Grid, context: Context) -> None:
    """The run under SecAgg+: Flower's ``SecAggPlusWorkflow`` (every sampled client shares its keys with all the
    others; ``secagg-reconstruction-threshold`` of them rebuild the masks of a client that drops after sharing its
    keys) inside ``DefaultWorkflow``, on the strategy and config of :func:`make_components`."""
    from flwr.server import LegacyContext
    from flwr.server.workflow import DefaultWorkflow

    from mirror_app.core.secure import quantization_range

    components = make_components(context)
    cfg = components.strategy.cfg
    legacy = LegacyContext(context, config=components.config, strategy=components.strategy)
    workflow = MinimumWorkflow(
        num_shares=1.0,
        reconstruction_threshold=cfg.secagg_reconstruction_threshold,
        max_weight=1.0,  # clients report 1 example: their vectors carry their own weights
        clipping_range=cfg.secure_clipping_range,
        quantization_range=quantization_range(cfg.clients_per_round),
        timeout=cfg.round_timeout or None,
    )
    DefaultWorkflow(fit_workflow=workflow)(grid, legacy)


SIMULATION = threading.Event()  # set when the run's grid is Flower's in-memory one (simulated nodes)
app = MirrorServerApp(server_fn=make_components)
IMPORTED_AT = time.time()  # when this module (Flower, torch and the project's code) finished importing
