"""What each row of a table is made of, read off the resolved config its runs were made with: who trains the
audio classifier in each phase, the classifier and the label loss, the proximal term, what is frozen and how many
audio parameters train, the rounds and local steps, and anything the method knows beyond the clients' clips.

Table 1 (mirror_app/studies/sweep.py) prints it under its tables from each method's records, and docs/methods.md
carries it (``make report``), so that no two rows differ in a way the page does not say.
"""

from __future__ import annotations

from pathlib import Path

from data.partition import AUDIO, AUDIOVISUAL

WHO = {AUDIO: "audio-only", AUDIOVISUAL: "audiovisual"}
SHAPES = ((98, 40), (3, 32, 32))  # the embedded dataset's front end: what the parameter counts are of
CLASSES = 20


def trainable_audio_parameters(cls, cfg) -> tuple[int, int]:
    """(trainable, all) parameters of the audio model ``cls`` evaluates, as its server builds it from ``cfg`` at
    the embedded dataset's front end (a fixed classifier's and a frozen base's are counted as not trainable)."""
    from mirror_app.core.models import build_model

    model = build_model(
        CLASSES, *SHAPES, cfg.audio_backbone, cfg.video_backbone, cfg.embed_dim, seed=0, heads=cfg.head_kinds
    )
    names = [f"c{i}" for i in range(CLASSES)]
    if cfg.align_anchors == "text":  # the count does not depend on the anchors: seeded ones need no text encoder
        import dataclasses

        cfg = dataclasses.replace(cfg, align_anchors="random")
    import logging

    from mirror_app.core.groups import group_keys

    flower = logging.getLogger("flwr")
    level = flower.level
    flower.setLevel(logging.WARNING)  # a count, not a run: no server log lines (anchors made) in the report's output
    try:
        server = cls.server_model(model, cfg, names)
    finally:
        flower.setLevel(level)
    params = dict(server.named_parameters())
    keys = {k for g in cls.audio_groups for k in group_keys(server, g) if k in params}  # buffers are not counted
    trainable = sum(params[k].numel() for k in keys if params[k].requires_grad)
    return trainable, sum(params[k].numel() for k in keys)


def recipe(cls, cfg) -> dict[str, str]:
    """One row's recipe from its strategy class and resolved config."""
    phases = cls.build_phases(cls.__new__(cls), cfg)
    trained_by = []
    for phase, rounds in phases:
        who = [
            WHO[m]
            for m in (AUDIO, AUDIOVISUAL)
            if (ins := phase.instruction(m)) is not None and cls.audio_classifier in ins.train
        ]
        trained_by.append(f"{phase.name} ({rounds} rounds): {' and '.join(who) or 'nobody'}")
    if cls.audio_classifier != "audio_head":
        classifier = f"fixed class anchors ({cfg.align_anchors}), trained projection"
    else:
        classifier = cfg.head_kinds["audio"]
    calibration = "restricted softmax" if cfg.restricted_softmax else cfg.loss_calibration
    trainable, total = trainable_audio_parameters(cls, cfg)
    frozen = "none" if trainable == total else f"{total - trainable:,} of {total:,} audio parameters"
    outside = cls.outside_information(cfg)
    return {
        "audio classifier trained by": "; ".join(trained_by),
        "classifier": classifier,
        "label loss": "cross-entropy" + ("" if calibration == "none" else f", {calibration}"),
        "proximal term": f"mu {cfg.mu:g}" if cfg.mu > 0 else "none",
        "trainable audio parameters": f"{trainable:,}",
        "frozen": frozen,
        "local training": f"{cfg.local_epochs} epoch(s), batch {cfg.batch_size}, {cfg.optimizer} lr {cfg.lr:g}, "
        f"{cfg.clients_per_round} clients a round",
        "beyond the clients' clips": outside or "nothing",
    }


def recipe_table(configs: dict[str, dict]) -> str:
    """The recipes of the methods of ``configs`` (method -> the resolved config of one of its runs), one row each."""
    from strategies import STRATEGIES, resolve_config

    rows = []
    for method, config in configs.items():
        cfg, cls = resolve_config({k: v for k, v in config.items() if k not in ("output-dir", "data-dir")})
        label = (cls.table_label or cls.display_name()) if method in STRATEGIES else method
        rows.append((label, recipe(cls, cfg)))
    if not rows:
        return "(no finished run to read a recipe from)\n"
    columns = list(rows[0][1])
    lines = ["| method | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 1)]
    lines += [f"| {label} | " + " | ".join(r[c] for c in columns) + " |" for label, r in rows]
    return "\n".join(lines) + "\n"


def recorded_configs(folder: Path, keys: dict[str, list[str]]) -> dict[str, dict]:
    """method -> the resolved config of its first finished run among ``keys`` (method -> run folder names) in
    ``folder`` (a study's runs, or records), with the keys it predates at the values it ran with."""
    from mirror_app.core.config import read_config

    out = {}
    for method, names in keys.items():
        for name in names:
            path = folder / name / "config.json"
            if path.is_file():
                out[method] = read_config(path)
                break
    return out
