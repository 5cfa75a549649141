"""A wrong run config stops before any training with one line naming key, value and what is allowed."""

from __future__ import annotations

import pytest
from helpers import tiny_cache, tiny_federation, tiny_strategy

from mirror_app.core.config import ConfigError, RunConfig
from strategies import ModalityAwareFedAvg, resolve_config, resolve_strategy


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
        ("aggregator", "geomedian", "one of"),
        ("audio-pretrained", "hf:no-owner", "'hf:<owner>/<repo>[:<file>]'"),
        ("audio-pretrained", "torchvision:resnet18", "'torchvision:<Weights>.<member>'"),
        ("sample-missing-video", 1.0, "[0, 1)"),
        ("missing-schedule", "120+0.2", "<round>:<+/-share>"),
        ("missing-schedule", "300:+0.2", "round 300 is past the run"),
        ("missing-schedule", "20:+0.9", "[missing-rate 0.3, 1)"),
        ("missing-schedule", "20:-0.1", "cannot get one"),
        ("eval-missing-video", "0.5,1.5", "fractions in (0, 1]"),
        ("init-checkpoint", "/nonexistent/model.pt", "existing model.pt"),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(key, value, allowed):
    with pytest.raises(ConfigError) as err:
        resolve_config({key: value})  # what the apps call: RunConfig, then the strategy registry
    message = str(err.value)
    assert "\n" not in message
    assert f"'{key}'" in message and repr(value) in message and allowed in message


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="'num-rounds' is unknown"):
        RunConfig.from_dict({"num-rounds": 3})


def test_defaults_live_in_pyproject_only():
    """Every RunConfig field has its key in [tool.flwr.app.config], the table has nothing else, and no
    field carries a default of its own (the table is the one source)."""
    import dataclasses
    import tomllib
    from pathlib import Path

    table = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    app_config = table["tool"]["flwr"]["app"]["config"]
    fields = dataclasses.fields(RunConfig)
    assert sorted(f.name.replace("_", "-") for f in fields) == sorted(app_config)
    assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING for f in fields)
    cfg = RunConfig.default()
    assert cfg.to_dict() == {
        k: float(v) if isinstance(getattr(cfg, k.replace("-", "_")), float) else v for k, v in app_config.items()
    }


def test_a_missing_key_is_named(monkeypatch):
    import mirror_app.core.config as config

    table = config.defaults()
    del table["lora-rank"]
    monkeypatch.setattr(config, "defaults", lambda: table)
    with pytest.raises(ConfigError, match=r"\['lora-rank'\] have no value"):
        RunConfig.from_dict({})


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cfg = RunConfig.from_dict({"output-dir": str(blocker / "results")})
    with pytest.raises(ConfigError, match="'output-dir'.*writable directory"):
        cfg.check_output_dir()


def test_more_clients_per_round_than_nodes(tmp_path, monkeypatch):
    import strategies.census as census

    monkeypatch.setattr(census, "NODE_SETTLE_SECONDS", 0.2)
    cache = tiny_cache(tmp_path / "c")
    manager, _ = tiny_federation(cache, 3, missing_rate=0.0)
    strategy = tiny_strategy(ModalityAwareFedAvg, cache, tmp_path, clients_per_round=5, recorder=False, evaluator=False)
    with pytest.raises(ConfigError, match="'clients-per-round' = 5 is invalid: only 3 SuperNodes"):
        strategy.configure_fit(1, strategy.initialize_parameters(manager), manager)


def test_a_checkpoint_of_other_heads_is_refused_before_the_run_naming_the_key(tmp_path):
    """A model.pt made with linear heads does not fit a run with the defaults' ETF heads: the pre-run check says so
    in one line naming 'init-checkpoint', where the ServerApp would have failed inside its start; the same heads
    load."""
    import torch

    from mirror_app.core.groups import GROUPS, get_groups
    from mirror_app.core.models import build_model
    from mirror_app.deploy.preflight import check_pretrained

    cache = tiny_cache(tmp_path / "c")
    shapes = (cache.audio.shape[1:], cache.video.shape[1:])
    for classifier in ("linear", "etf"):
        heads = RunConfig.from_dict({"classifier": classifier}).head_kinds
        state = get_groups(build_model(cache.num_classes, *shapes, seed=0, heads=heads), GROUPS)
        payload = {"state": {g: [torch.from_numpy(a.copy()) for a in arrays] for g, arrays in state.items()}}
        torch.save(payload, tmp_path / f"{classifier}.pt")
    data = {"data-dir": str(tmp_path / "c"), "audio-pretrained": "none", "video-pretrained": "none"}
    cfg = RunConfig.from_dict(data | {"init-checkpoint": str(tmp_path / "linear.pt")})
    assert cfg.classifier == "etf"
    with pytest.raises(ConfigError, match=r"'init-checkpoint' = .*linear.pt' does not fit this run's model \(group"):
        check_pretrained(cfg, cache)
    check_pretrained(RunConfig.from_dict(data | {"init-checkpoint": str(tmp_path / "etf.pt")}), cache)
    check_pretrained(
        RunConfig.from_dict(data | {"init-checkpoint": str(tmp_path / "linear.pt"), "classifier": "linear"}), cache
    )


def test_distill_alone_needs_a_checkpoint(tmp_path):
    cache = tiny_cache(tmp_path / "c")
    with pytest.raises(ConfigError, match="'init-checkpoint'"):
        tiny_strategy(resolve_strategy("distill"), cache, tmp_path, recorder=False, evaluator=False)


def test_dotted_path_plugs_in_a_user_strategy():
    assert resolve_strategy("strategies.modality_mirror.ModalityMirror").__name__ == "ModalityMirror"
    with pytest.raises(ConfigError, match="not a subclass"):
        resolve_strategy("collections.OrderedDict")


def test_a_strategy_must_declare_the_client_tasks_its_phases_name(tmp_path):
    cache = tiny_cache(tmp_path / "c")
    with pytest.raises(ConfigError, match="task 'smooth-audio', which ForgetfulFL.client_tasks does not declare"):
        tiny_strategy(
            resolve_strategy("tests.plugin_method.ForgetfulFL"), cache, tmp_path, recorder=False, evaluator=False
        )
    tiny_strategy(
        resolve_strategy("tests.plugin_method.SmoothedAudioFL"), cache, tmp_path, recorder=False, evaluator=False
    )


def test_clients_run_only_the_tasks_of_their_kind_that_the_method_declares(tmp_path):
    from clients import TaskError
    from mirror_app.core.config import RunConfig
    from mirror_app.core.groups import AUDIO_MODEL, AV_MODEL, flatten, get_groups
    from mirror_app.core.models import build_model
    from strategies import ModalityMirror

    cache = tiny_cache(tmp_path / "c")
    manager, proxies = tiny_federation(cache, 4, missing_rate=0.5)
    heads = RunConfig.from_dict({}).head_kinds  # the clients' (the defaults')
    model = build_model(cache.num_classes, cache.audio.shape[1:], cache.video.shape[1:], seed=0, heads=heads)
    by_kind = {p.client.modality: p.client for p in proxies.values()}
    audio, av = by_kind["audio"], by_kind["audiovisual"]
    audio.tasks = av.tasks = ModalityMirror.client_tasks

    def fit(client, task, groups):
        return client.fit(
            flatten(get_groups(model, groups), groups), {"task": task, "groups": ",".join(groups), "server-round": 1}
        )

    arrays, examples, refused = fit(audio, "train-av", AV_MODEL)  # says so in its reply, trains nothing
    assert arrays == [] and examples == 0 and refused["modality"] == "audio"
    assert refused["refused"] == "AudioClient has no video at round 1: cannot run task 'train-av'"
    with pytest.raises(TaskError, match="cannot run task 'align-av'"):
        fit(av, "align-av", AV_MODEL)  # declared by another method only
    with pytest.raises(TaskError, match=r"task 'train-av' needs parameter groups .*missing \['video_encoder'"):
        fit(av, "train-av", AUDIO_MODEL)
    _, _, metrics = fit(av, "train-audio", AUDIO_MODEL)
    assert metrics["groups"] == ",".join(AUDIO_MODEL)


def test_a_number_for_a_list_valued_key_is_a_list_of_one():
    """`--run-config "eval-missing-video=0.5"`, written as a user would, arrives from Flower as a float."""
    from mirror_app.deploy.preflight import pairs_to_values, parse_pairs

    raw = pairs_to_values(parse_pairs("eval-missing-video=0.5"))
    assert raw == {"eval-missing-video": 0.5}
    assert RunConfig.from_dict(raw).eval_missing_shares == (0.5,)
    assert RunConfig.from_dict({"eval-missing-video": 1}).eval_missing_shares == (1.0,)
    assert RunConfig.from_dict({"eval-missing-video": "0.25,0.5"}).eval_missing_shares == (0.25, 0.5)
    with pytest.raises(ConfigError, match="'eval-missing-video' = '1.5' is invalid: comma-separated fractions"):
        RunConfig.from_dict({"eval-missing-video": 1.5})
    with pytest.raises(ConfigError, match="'missing-schedule' = 0.5 is invalid: a string"):
        RunConfig.from_dict({"missing-schedule": 0.5})  # not a list of numbers: a number stays refused
