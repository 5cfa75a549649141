"""The paired differences every study reports against its control: paired by seed at one rate, gaps left out."""

from __future__ import annotations

import pandas as pd

from mirror_app.studies.runs import difference_cell, paired_points


def _runs(values: dict[int, float | None], rate: float = 0.3) -> pd.DataFrame:
    return pd.DataFrame({"seed": list(values), "missing_rate": rate, "best_dev_audio_top1": list(values.values())})


def test_pairs_by_seed_at_the_rate_and_leaves_out_what_one_side_lacks():
    a = pd.concat([_runs({0: 0.20, 1: 0.30, 2: None}), _runs({0: 0.9}, rate=0.5)])
    b = _runs({0: 0.10, 1: 0.25, 3: 0.5})
    diff = paired_points(a, b, 0.3)
    assert diff.round(6).to_dict() == {0: 10.0, 1: 5.0}  # seed 2 has no value, seed 3 no partner, 0.5 another rate
    assert difference_cell(diff) == "+7.5 +- 2.5"
    assert difference_cell(diff, count=True) == "+7.5 +- 2.5 (n = 2)"


def test_a_mean_within_one_spread_is_no_measurable_effect_and_no_pair_is_na():
    diff = paired_points(_runs({0: 0.22, 1: 0.19}), _runs({0: 0.20, 1: 0.20}), 0.3)
    assert difference_cell(diff) == "+0.5 +- 1.5 (no measurable effect)"
    assert difference_cell(paired_points(_runs({0: 0.2}), _runs({1: 0.2}), 0.3)) == "n/a"
    one = paired_points(_runs({0: 0.3}), _runs({0: 0.2}), 0.3)
    assert difference_cell(one) == difference_cell(one, count=True) == "+10.0 (one pair: no spread)"


def test_table1_pairs_each_student_against_the_control_and_against_multifl_with_the_audio_head():
    from mirror_app.studies.sweep import control_differences

    def rows(method: str, values: dict[int, float]) -> pd.DataFrame:
        return _runs(values).assign(method=method, status="ok")

    runs = pd.concat(
        [
            rows("modality-mirror", {0: 0.20, 1: 0.30}),
            rows("modality-mirror-agreement", {0: 0.25, 1: 0.27}),
            rows("modality-mirror-control", {0: 0.10, 1: 0.20}),
            rows("multifl-av-head", {0: 0.30, 1: 0.30}),
        ]
    )
    control = control_differences(runs, [0.3])
    assert "| ModalityMirror minus the control | +10.0 +- 0.0 (n = 2) |" in control
    assert "agreement distillation minus the control | +11.0 +- 4.0 (n = 2) |" in control
    multifl = control_differences(runs, [0.3], "multifl-av-head")
    assert (
        "| ModalityMirror minus MultiFL, AV clients train the audio head | -5.0 +- 5.0 (no measurable effect) (n = 2) |"
        in multifl
    )
    assert control_differences(runs[runs["method"] != "multifl-av-head"], [0.3], "multifl-av-head") == ""


def test_the_distillation_verdict_names_only_rates_where_an_objective_beats_its_reference_beyond_the_spread():
    from mirror_app.studies.distill import _verdict_lines

    def rows(objective: str, method: str, by_rate: dict[float, dict[int, float]]) -> pd.DataFrame:
        parts = [_runs(values, rate) for rate, values in by_rate.items()]
        return pd.concat(parts).assign(reading="paper", objective=objective, variant="", method=method)

    control = {0.1: {0: 0.20, 1: 0.20}, 0.3: {0: 0.30, 1: 0.30}}
    ok = pd.concat(
        [
            rows("ce", "modality-mirror-control", control),
            # +5 +- 1 at 0.1 (beats the control), -3 +- 1 at 0.3 (below it: not a win, however clear)
            rows("kl", "modality-mirror", {0.1: {0: 0.24, 1: 0.26}, 0.3: {0: 0.26, 1: 0.28}}),
            rows("multifl-av-head", "multifl-av-head", {0.1: {0: 0.22, 1: 0.23}, 0.3: {0: 0.40, 1: 0.40}}),
        ]
    )
    lines = _verdict_lines(ok, [0.1, 0.3])
    (kl,) = [line for line in lines if line.startswith("- paper reading, kl:")]
    assert kl == (
        "- paper reading, kl: against the control +5.0 at 0.1, -3.0 at 0.3 points; above the control by more than the "
        "seeds' spread at 0.1; above MultiFL with the audio head by more than the spread at 0.1."
    )
    assert not [line for line in lines if ", ce:" in line]  # the control is not judged against itself
