"""Secure aggregation through `flwr run`: Flower's SecAgg+ (SecAggPlusWorkflow on the server, secaggplus_mod on the
clients) gives the strategy one sum per round, and the model it makes equals plain FedAvg's to within SecAgg+'s
quantisation, also in a round in which one client of eight fails after it shared its keys."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import copy_packages

ROOT = Path(__file__).resolve().parents[1]

# The project's ClientApp with one more mod, outermost: partition 3 fails when it is handed its training
# instruction in round 1, i.e. after SecAgg+'s setup and key-sharing stages (the only messages that carry the
# instruction's arrays are the training ones). In a simulation a failure is an exception: a killed Ray worker would
# take every client it hosts with it.
DYING_APP = """
from flwr.app import MessageType
from flwr.clientapp import ClientApp

from clients.mods import attack_mod, local_dp_mod, secure_aggregation_mod
from mirror_app.client_app import client_fn


def dies_after_sharing_its_keys(msg, context, call_next):
    if (
        msg.metadata.message_type == MessageType.TRAIN
        and "fitins.parameters" in msg.content.array_records
        and int(context.node_config.get("partition-id", -1)) == 3
        and msg.metadata.group_id == "1"
    ):
        raise RuntimeError("partition 3 fails after sharing its keys")
    return call_next(msg, context)


MODS = [dies_after_sharing_its_keys, secure_aggregation_mod, attack_mod, local_dp_mod]
app = ClientApp(client_fn=client_fn, mods=MODS)
"""


@pytest.fixture(scope="module")
def dying_project(tmp_path_factory) -> Path:
    """A copy of the project whose ClientApp is :data:`DYING_APP`."""
    copy = tmp_path_factory.mktemp("dying") / "project"
    copy.mkdir()
    copy_packages(copy)
    (copy / "dying_app.py").write_text(DYING_APP)
    text = (ROOT / "pyproject.toml").read_text()
    assert 'clientapp = "mirror_app.client_app:app"' in text
    (copy / "pyproject.toml").write_text(text.replace("mirror_app.client_app:app", "dying_app:app"))
    return copy


@pytest.fixture(scope="module")
def superlink(tmp_path_factory):
    from mirror_app.deploy.launch import SuperLink

    link = SuperLink(tmp_path_factory.mktemp("flwr-home"))
    yield link
    assert not link.stop(), "processes left running"


def run(link, project: Path, data_dir, out: Path, secure: bool) -> Path:
    config = (
        f"data-dir='{data_dir}' output-dir='{out}' strategy='multifl' num-server-rounds=1 distill-rounds=0 "
        f"clients-per-round=8 eval-every=1 partitioner='iid' missing-rate=0.25 "
        f"secure-aggregation={'true' if secure else 'false'}"
        + (" secure-min-clients=2" if secure else "")  # 2 audio-only clients train the audio head
    )
    res = link.flwr_run(project, "--federation-config", "num-supernodes=8", "--run-config", config, timeout=600)
    runs = list(out.glob("*-run*"))
    assert len(runs) == 1 and (runs[0] / "summary.json").is_file(), (res.stdout + res.stderr)[-4000:]
    return runs[0]


@pytest.mark.timeout(900)
def test_secure_aggregation_equals_fedavg_within_quantisation_with_a_client_lost_after_key_sharing(
    superlink, dying_project, data_dir, tmp_path
):
    plain = run(superlink, dying_project, data_dir, tmp_path / "plain", secure=False)
    secure = run(superlink, dying_project, data_dir, tmp_path / "secure", secure=True)
    for folder in (plain, secure):
        clients = pd.read_csv(folder / "clients.csv")
        assert sorted(clients.loc[clients["status"] == "failed", "partition_id"]) == [3]
        assert (clients["status"] == "ok").sum() == 7
        metrics = pd.read_csv(folder / "metrics.csv")
        assert metrics.loc[metrics["round"] == 1, ["clients", "failures"]].values.tolist() == [[7, 1]]
    summary = json.loads((secure / "summary.json").read_text())
    assert summary["secure_aggregation"]["quantization_levels"] == 2**28
    assert json.loads((plain / "summary.json").read_text())["secure_aggregation"] is None
    # the strategy refuses replies that are not one and the same sum, so a finished secure run never saw one update;
    # its clients sent one example each (their weights travel inside the summed vector)
    assert (pd.read_csv(secure / "clients.csv").query("status == 'ok'")["num_examples"] == 1).all()
    assert pd.read_csv(secure / "metrics.csv")["secagg_clipped"].fillna(0).sum() == 0
    a = torch.load(plain / "model.pt", weights_only=True)["state"]
    b = torch.load(secure / "model.pt", weights_only=True)["state"]
    for group in a:
        for x, y in zip(a[group], b[group]):
            assert float((x.double() - y.double()).abs().max()) <= 1e-6, group  # measured: 1.2e-7 (float32's step)
    # ... while every client's update is far larger than that
    norms = pd.read_csv(plain / "clients.csv").query("status == 'ok'")["update_norm"]
    assert (norms > 1e-2).all(), norms
