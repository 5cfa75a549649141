"""The ClientApp's per-worker workspace cache never carries one run's weights into another run.

A client loads only the parameter groups the server sends, so the models of a worker's workspace keep
whatever else they hold. FedCMI trains its audio_self/audio_inf projectors (in a model the worker builds
around its dual encoder); other methods have no such groups, and a workspace shared across runs would
hand, say, a later ModalityMirror run a model another method has trained.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from helpers import tiny_cache

from mirror_app import client_app
from mirror_app.core.config import RunConfig
from mirror_app.core.groups import AUDIO_MODEL, flatten, get_groups
from mirror_app.core.models import build_model
from strategies.fedcmi.model import FEDCMI_AV, FedCMIModel


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    tiny_cache(root / "manifest")  # a prepared cache under <data-dir>/<dataset>
    return root


@pytest.fixture(autouse=True)
def fresh_worker():
    client_app.clear_workspaces()
    yield
    client_app.clear_workspaces()


def context(data_dir, run_id: int, strategy: str, pid: int, modality: str) -> Context:
    run_config = {
        "strategy": strategy,
        "dataset": "manifest",
        "data-dir": str(data_dir),
        "local-epochs": 1,
        "batch-size": 16,
        "partitioner": "iid",
        "seed": 0,
    }
    node_config = {"partition-id": pid, "num-partitions": 2, "modality": modality}
    return Context(run_id=run_id, node_id=pid, node_config=node_config, state=RecordDict(), run_config=run_config)


def fit(client, groups: tuple[str, ...], task: str, server_round: int = 1):
    model = build_model(
        client.workspace.cache.num_classes,
        client.workspace.cache.audio.shape[1:],
        client.workspace.cache.video.shape[1:],
        seed=0,
        heads=RunConfig.from_dict({}).head_kinds,  # the run config names no classifier: the defaults'
    )  # the server's initial model
    if task.startswith("fedcmi"):
        model = FedCMIModel(model)
    arrays = flatten(get_groups(model, groups), groups)
    out, _, _ = client.fit(arrays, {"task": task, "groups": ",".join(groups), "server-round": server_round})
    return out


def projectors(ws) -> tuple[np.ndarray, np.ndarray]:
    model = ws.extras["fedcmi"][0]
    return model.audio_self.weight.detach().numpy().copy(), model.audio_inf.weight.detach().numpy().copy()


def run_b(data_dir):
    """Run B (ModalityMirror) in this process: an audio-only client's phase-1 round."""
    client = client_app.make_client(context(data_dir, 2, "modality-mirror", 1, "audio"))
    return client, fit(client, AUDIO_MODEL, "train-audio")


def test_a_later_run_gets_fresh_models_and_the_same_result_as_in_a_fresh_worker(data_dir):
    a = client_app.make_client(context(data_dir, 1, "fedcmi", 0, "audiovisual"))
    fit(a, FEDCMI_AV, "fedcmi-av")
    self_a, inf_a = projectors(a.workspace)
    dim = self_a.shape[0]
    assert not np.array_equal(self_a, np.eye(dim)) and np.abs(inf_a).max() > 0  # FedCMI moved its projectors

    b, out = run_b(data_dir)
    assert b.workspace is not a.workspace and b.workspace_built
    assert "fedcmi" not in b.workspace.extras  # nothing of run A's models
    assert all(key[0] == 2 for key in client_app._workspaces)  # run A's workspace was dropped

    again = client_app.make_client(context(data_dir, 2, "modality-mirror", 0, "audiovisual"))
    assert again.workspace is b.workspace and not again.workspace_built  # reused within a run

    client_app.clear_workspaces()  # a fresh worker process that only ever ran B
    _, alone = run_b(data_dir)
    assert len(out) == len(alone) and all(np.array_equal(x, y) for x, y in zip(out, alone))


def test_a_worker_keeps_few_workspaces(data_dir):
    for strategy in ("multifl", "harmony", "unifl"):
        client_app.make_client(context(data_dir, 5, strategy, 0, "audio"))
    assert len(client_app._workspaces) <= client_app.MAX_WORKSPACES
    assert [key[1] for key in client_app._workspaces] == ["harmony", "unifl"][-client_app.MAX_WORKSPACES :]


def test_a_node_keeps_its_partition_in_its_own_state(data_dir, monkeypatch):
    """A deployed SuperNode starts a fresh ClientApp process per message: the partition computed for the first
    message is kept in context.state, read back by the next process, and recomputed when the run config
    changes it."""
    from flwr.app import RecordDict

    state = RecordDict()

    def ctx(seed: int) -> Context:
        c = context(data_dir, 1, "modality-mirror", 1, "audio")
        return Context(
            run_id=1,
            node_id=1,
            node_config={"partition-id": 1, "num-partitions": 2},
            state=state,
            run_config={**c.run_config, "seed": seed, "partitioner": "dirichlet", "dirichlet-alpha": 1.0},
        )

    first = client_app.make_client(ctx(0))
    client_app.clear_workspaces()

    def no_recompute(*args):
        raise AssertionError("the partition was computed again")

    monkeypatch.setattr(client_app, "get_partition", no_recompute)
    again = client_app.make_client(ctx(0))  # as a fresh process with the node's state would
    assert np.array_equal(again.partition.indices, first.partition.indices)
    assert again.partition.modality == first.partition.modality
    monkeypatch.undo()
    other = client_app.make_client(ctx(1))  # another seed: another partition, recomputed
    assert not np.array_equal(other.partition.indices, first.partition.indices)
