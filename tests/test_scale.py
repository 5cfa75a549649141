"""Ten thousand clients: a census that learns from the clients it draws and from replies, early one-line
refusals of a federation that cannot hold clips, and an embedded dataset that grows on request."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.server import Server
from helpers import run_tool, tiny_cache, tiny_federation, tiny_strategy

from data import synthetic
from data.features import FeatureSpec
from data.partition import federation_problem
from strategies import ModalityAwareFedAvg, ModalityMirror

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tiny_cache(tmp_path_factory.mktemp("scale") / "tiny")


def count_asks(proxies) -> dict:
    """Wrap each in-process proxy's get_properties to count how often the server asks it."""
    asked: dict = {}
    for pid, proxy in proxies.items():
        original = proxy.get_properties

        def counted(ins, timeout, group_id, pid=pid, original=original):
            asked[pid] = asked.get(pid, 0) + 1
            return original(ins, timeout, group_id)

        proxy.get_properties = counted
    return asked


def test_a_sampled_census_asks_only_the_drawn_nodes_and_never_twice(cache, tmp_path):
    manager, proxies = tiny_federation(cache, 12, missing_rate=0.25)
    asked = count_asks(proxies)
    strategy = tiny_strategy(
        ModalityAwareFedAvg,
        cache,
        tmp_path,
        census="sampled",
        clients_per_round=3,
        num_server_rounds=4,
        distill_rounds=0,
        **{"missing-rate": 0.25},
    )
    Server(client_manager=manager, strategy=strategy).fit(strategy.total_rounds, None)
    assert max(asked.values()) == 1  # a node asked once is never asked again
    trained = {r["partition_id"] for r in strategy.recorder.clients}
    assert set(asked) == trained and len(asked) < 12  # only the nodes drawn were asked
    assert strategy.census.mode == "sampled" and strategy.census.nodes == 12
    # the seeded audio-only set does not depend on who was asked, and is recorded
    from data.partition import audio_only_partitions

    recorded = strategy.missingness_summary()["audio_only_partitions"]
    assert recorded == audio_only_partitions(12, 0.25, 0).tolist() and len(recorded) == 3
    assert all(r["status"] == "ok" for r in strategy.recorder.clients)


def test_a_distillation_phase_fills_its_sample_with_audiovisual_nodes_not_yet_known(cache, tmp_path):
    manager, proxies = tiny_federation(cache, 12, missing_rate=0.5)
    asked = count_asks(proxies)
    strategy = tiny_strategy(
        ModalityMirror,
        cache,
        tmp_path,
        census="sampled",
        clients_per_round=4,
        num_server_rounds=1,
        distill_rounds=1,
        **{"missing-rate": 0.5},
    )
    Server(client_manager=manager, strategy=strategy).fit(strategy.total_rounds, None)
    distilled = [r for r in strategy.recorder.clients if r["phase"] == "distillation"]
    assert len(distilled) == 4 and all(r["modality"] == "audiovisual" for r in distilled)
    assert all(r["status"] == "ok" for r in distilled)
    assert max(asked.values()) == 1 and len(asked) < 12


def test_a_full_census_asks_every_node_once_and_auto_picks_it_for_small_federations(cache, tmp_path):
    manager, proxies = tiny_federation(cache, 6, missing_rate=0.5)
    asked = count_asks(proxies)
    strategy = tiny_strategy(ModalityMirror, cache, tmp_path, clients_per_round=3)  # census 'auto'
    Server(client_manager=manager, strategy=strategy).fit(strategy.total_rounds, None)
    assert strategy.census.mode == "full" and asked == {pid: 1 for pid in range(6)}


def test_a_federation_that_cannot_hold_clips_is_refused_in_one_line_naming_counts_and_fixes():
    labels = np.repeat(np.arange(4), 10)  # 40 training clips of 4 classes
    assert federation_problem(labels, 40, "iid", 0.1, 0, "embedded") == ""
    message = federation_problem(labels, 41, "iid", 0.1, 0, "embedded")
    assert message.startswith("41 SuperNodes but dataset 'embedded' has 40 training clips")
    assert "fewer SuperNodes" in message and "embedded-clips-per-class" in message and "\n" not in message
    message = federation_problem(labels, 30, "dirichlet", 0.05, 0, "manifest")
    assert "could not split 40 samples into 30 non-empty Dirichlet partitions" in message
    assert "partitioner='iid'" in message and "embedded-clips-per-class" not in message


def test_the_servers_check_runs_before_any_node_is_asked(cache, tmp_path):
    from mirror_app.core.config import ConfigError

    manager, proxies = tiny_federation(cache, 6, missing_rate=0.5)
    asked = count_asks(proxies)
    strategy = tiny_strategy(ModalityMirror, cache, tmp_path, clients_per_round=3)
    strategy.federation_check = lambda nodes: f"{nodes} SuperNodes but too few clips" if nodes > 5 else ""
    with pytest.raises(ConfigError, match="6 SuperNodes but too few clips"):
        strategy.configure_fit(1, strategy.initialize_parameters(manager), manager)
    assert asked == {}


def test_make_runs_tool_refuses_too_many_nodes_before_flower_starts(tmp_path, data_dir):
    home = tmp_path / "flwr-home"
    env = {"PATH": str(Path(sys.executable).parent), "FLWR_HOME": str(home), "HOME": str(tmp_path)}
    config = f"data-dir='{data_dir}' output-dir='{tmp_path / 'out'}' partitioner='iid'"
    res = run_tool(["--num-supernodes", "10000", "--run-config", config], env)
    assert res.returncode == 2
    (line,) = res.stderr.strip().splitlines()
    assert line == (
        "error: 10000 SuperNodes but dataset 'embedded' has 3600 training clips: every client needs at least one; "
        "use fewer SuperNodes (--num-supernodes, NUM_CLIENTS), a larger dataset (run config "
        "embedded-clips-per-class)"
    )
    assert not home.exists()


def test_the_embedded_dataset_grows_on_request_deterministically_and_its_default_is_unchanged(tmp_path):
    a = synthetic.load(tmp_path / "a", samples_per_class=12)
    b = synthetic.load(tmp_path / "b", samples_per_class=12)
    assert len(a) == 12 * 20 and a.path.name == "embedded-v3-n12-mel40-img32"
    for name in ("audio", "video", "labels"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert (a.split == b.split).all()
    # the default size: the same cache folder and fingerprint as before (so existing caches and figures hold)
    assert synthetic.fingerprint(FeatureSpec()) == {
        "dataset": "embedded",
        "version": 3,
        "seed": 2024,
        "samples_per_class": 250,
        "test_fraction": 0.2,
        "snr_db": [-21.0, -9.0],
        "features": {"num_mel_bins": 40, "audio_seconds": 1.0, "image_size": 32},
    }
    from data import load_dataset

    grown = load_dataset("embedded", tmp_path / "a", clips_per_class=12)
    assert grown.path == a.path
