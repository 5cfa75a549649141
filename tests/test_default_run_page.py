"""The default run's page says what phase 2 did to the audio model, from the record, whichever way it went."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mirror_app.studies.report import CONTROL, CONTROL_SAID, PHASE2_SAID, default_run


def _phase(round_: int, audio: float) -> dict:
    row = {"round": round_, "audio_top1": audio, "audio_top5": 0.5, "audio_macro_f1": 0.1, "av_top1": 0.7}
    row["audio_majority_share"] = 0.3
    return row | {"best_dev": row, "first": row}


@pytest.mark.parametrize(
    ("before", "after", "said"),
    [(0.251, 0.251, "left it where phase 1 ended"), (0.20, 0.26, "lifted it"), (0.26, 0.20, "lowered it")],
)
def test_the_page_says_what_phase_2_did(tmp_path, before, after, said):
    run = tmp_path / "run"
    run.mkdir()
    summary = {
        "schedule": [{"rounds": 2}, {"rounds": 1}],
        "phases": {"modality-aware-fl": _phase(2, before), "distillation": _phase(3, after)},
        "best_dev": _phase(3, after),
    }
    (run / "summary.json").write_text(json.dumps(summary))
    metrics = pd.DataFrame(
        {"round": [0, 1, 2, 3], "phase_index": [1, 1, 1, 2], "phase": ["modality-aware-fl"] * 3 + ["distillation"],
         "audio_top1": [0.05, 0.1, before, after], "av_top1": [0.1, 0.5, 0.7, 0.7], "dev_audio_top1": 0.2}
    )  # fmt: skip
    metrics.to_csv(run / "metrics.csv", index=False)
    text, _ = default_run(tmp_path)
    (line,) = [x for x in text.splitlines() if x.startswith(PHASE2_SAID)]
    assert f"from {before:.3f} at the end of phase 1 to {after:.3f} at the end of phase 2" in line
    assert line.endswith(f"phase 2 {said}.")
    assert not any(x.startswith(CONTROL_SAID) for x in text.splitlines())  # no control recorded: none said


def _record(folder, strategy: str, before: float, after: float, seed: int = 0, replace: bool = False) -> None:
    folder.mkdir(exist_ok=replace)
    summary = {
        "schedule": [{"rounds": 2}, {"rounds": 1}],
        "phases": {"modality-aware-fl": _phase(2, before), "distillation": _phase(3, after)},
        "best_dev": _phase(3, after),
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    objective = "ce" if strategy == CONTROL else "kl"
    (folder / "config.json").write_text(
        json.dumps({"strategy": strategy, "distill-objective": objective, "seed": seed})
    )
    metrics = pd.DataFrame(
        {"round": [0, 2, 3], "phase_index": [1, 1, 2], "phase": ["modality-aware-fl"] * 2 + ["distillation"],
         "audio_top1": [0.05, before, after], "av_top1": [0.1, 0.7, 0.7], "dev_audio_top1": 0.2}
    )  # fmt: skip
    metrics.to_csv(folder / "metrics.csv", index=False)


@pytest.mark.parametrize("name", ["modality-mirror-control-mr0.3-s0", "a-control"])  # sorts after or before the run
@pytest.mark.parametrize(
    ("after", "control", "said"),
    [
        (0.378, 0.30, "; distillation ended 0.078 above training on labels alone: what the teacher added ("),
        (
            0.378,
            0.45,
            "; distillation ended 0.072 below training on labels alone: phase 2's rise comes from its training on "
            "labels, not from the teacher (",
        ),
        (0.378, 0.378, "; distillation ended where training on labels alone did: phase 2's rise comes from"),
        (0.30, 0.45, "; distillation ended 0.150 below training on labels alone ("),  # no rise to explain
    ],
)
def test_a_recorded_control_says_what_the_teacher_added(tmp_path, name, after, control, said):
    """The control (phase 2 on labels alone) is told apart by its strategy, whatever its folder's name; the page
    gives the default run's lines and the difference of the two ends of phase 2, and explains a rise only where
    phase 2 rose."""
    _record(tmp_path / "modality-mirror-mr0.3-s0", "modality-mirror", 0.315, after)
    _record(tmp_path / name, CONTROL, 0.315, control)
    text, _ = default_run(tmp_path)
    (line,) = [x for x in text.splitlines() if x.startswith(PHASE2_SAID)]
    assert f"to {after:.3f} at the end of phase 2" in line
    (line,) = [x for x in text.splitlines() if x.startswith(CONTROL_SAID)]
    assert f"went from 0.315 to {control:.3f} ({control - 0.315:+.3f}){said}" in line


def test_a_control_run_with_other_settings_or_a_second_control_is_refused(tmp_path):
    _record(tmp_path / "modality-mirror-mr0.3-s0", "modality-mirror", 0.315, 0.378)
    _record(tmp_path / "control", CONTROL, 0.315, 0.45, seed=1)
    with pytest.raises(ValueError, match=r"other settings than modality-mirror-mr0.3-s0 \(seed\)"):
        default_run(tmp_path)
    _record(tmp_path / "control", CONTROL, 0.315, 0.45, replace=True)
    _record(tmp_path / "control-2", CONTROL, 0.315, 0.45)
    with pytest.raises(ValueError, match="holds 2 control records"):
        default_run(tmp_path)
