"""A wrong run config stops before any training with one line naming key, value and what is allowed."""

from __future__ import annotations

import pytest

from helpers import tiny_cache, tiny_federation, tiny_strategy
from mirror_app.config import ConfigError, RunConfig
from strategies import ModalityAwareFedAvg, resolve_strategy


@pytest.mark.parametrize(
    "key,value,allowed",
    [
        ("strategy", "fedfoo", "one of"),
        ("strategy", "no_such_module.Cls", "cannot import"),
        ("dataset", "imagenet", "one of"),
        ("missing-rate", 1.0, "[0, 1)"),
        ("missing-rate", -0.1, "[0, 1)"),
        ("num-server-rounds", 0, ">= 1"),
        ("distill-rounds", -1, ">= 0"),
        ("clients-per-round", 0, ">= 1"),
        ("temperature", 0.0, "> 0"),
        ("temperature", -2, "> 0"),
        ("lr", 0, "> 0"),
        ("dirichlet-alpha", 0, "> 0"),
        ("optimizer", "lbfgs", "one of"),
        ("audio-backbone", "vgg", "one of"),
        ("device", "tpu", "one of"),
        ("local-epochs", 1.5, "an integer"),
        ("seed", "seven", "an integer"),
        ("lora-rank", 0, ">= 1"),
        ("align-av-weight", -0.5, ">= 0"),
        ("partitioner", "shards", "one of"),
        ("round-timeout", -1, ">= 0"),
        ("resume", "/nonexistent/run", "interrupted run"),
        ("num-server-rounds", "ten", "an integer"),
        ("lr", "fast", "a number"),
        ("missing-rate", True, "a number"),
        ("dataset", 3, "a string"),
        ("fold", 0, ">= 1"),
        ("dev-fraction", 1.0, "[0, 1)"),
        ("mu", -1, ">= 0"),
        ("server-momentum", 1.0, "[0, 1)"),
        ("aggregator", "fedmedian", "one of"),
        ("audio-pretrained", "/nonexistent.pt", "existing local checkpoint"),
        ("init-checkpoint", "/nonexistent/model.pt", "existing model.pt"),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(key, value, allowed):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({key: value})
    message = str(err.value)
    assert "\n" not in message
    assert f"'{key}'" in message and repr(value) in message and allowed in message


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="'num-rounds' is unknown"):
        RunConfig.from_dict({"num-rounds": 3})


def test_defaults_match_pyproject():
    import tomllib
    from pathlib import Path

    table = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    app_config = table["tool"]["flwr"]["app"]["config"]
    assert RunConfig.from_dict(app_config) == RunConfig()  # every key known, same defaults


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cfg = RunConfig.from_dict({"output-dir": str(blocker / "results")})
    with pytest.raises(ConfigError, match="'output-dir'.*writable directory"):
        cfg.check_output_dir()


def test_more_clients_per_round_than_nodes(tmp_path, monkeypatch):
    import strategies.base as base

    monkeypatch.setattr(base, "NODE_SETTLE_SECONDS", 0.2)
    cache = tiny_cache(tmp_path / "c")
    manager, _ = tiny_federation(cache, 3, missing_rate=0.0)
    strategy = tiny_strategy(ModalityAwareFedAvg, cache, tmp_path, clients_per_round=5, recorder=False,
                             evaluator=False)
    with pytest.raises(ConfigError, match="'clients-per-round' = 5 is invalid: only 3 SuperNodes"):
        strategy.configure_fit(1, strategy.initialize_parameters(manager), manager)


def test_distill_alone_needs_a_checkpoint(tmp_path):
    cache = tiny_cache(tmp_path / "c")
    with pytest.raises(ConfigError, match="'init-checkpoint'"):
        tiny_strategy(resolve_strategy("distill"), cache, tmp_path, recorder=False, evaluator=False)


def test_dotted_path_plugs_in_a_user_strategy():
    assert resolve_strategy("strategies.modality_mirror.ModalityMirror").__name__ == "ModalityMirror"
    with pytest.raises(KeyError, match="not a subclass"):
        resolve_strategy("collections.OrderedDict")
