"""One client call as a deployed SuperNode's fresh ClientApp process makes it, timed (``make bench`` runs it).

``python -m mirror_app.bench.cold_client RUN_CONFIG PARTITION PARTITIONS THREADS`` makes the client of that
partition (audiovisual, ``THREADS`` torch threads) and runs two ``train-av`` calls one after the other on
the model as the server would send it; prints JSON: seconds to make the client and of each call. Since
Flower 1.21 every message a SuperNode receives starts such a process, so every message pays the first
call's costs.
"""

from __future__ import annotations

import json
import sys
import time

from flwr.app import Context, RecordDict

from mirror_app import client_app
from mirror_app.core.groups import AV_MODEL, flatten, get_groups
from mirror_app.deploy.preflight import pairs_to_values, parse_pairs


def cold_call(run_config: str, partition: int, partitions: int, threads: int) -> dict:
    node: dict[str, bool | float | int | str] = {
        "partition-id": partition,
        "num-partitions": partitions,
        "num-threads": threads,
        "modality": "audiovisual",
    }
    context = Context(
        run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config=pairs_to_values(parse_pairs(run_config))
    )
    t0 = time.perf_counter()
    client = client_app.make_client(context)
    made = time.perf_counter() - t0
    arrays = flatten(get_groups(client.workspace.model, AV_MODEL), AV_MODEL)
    config = {"task": "train-av", "groups": ",".join(AV_MODEL), "server-round": 2}
    times = []
    for _ in range(2):
        start = time.perf_counter()
        client.fit(arrays, config)
        times.append(time.perf_counter() - start)
    return {"make_client_s": made, "first_fit_s": times[0], "second_fit_s": times[1]}


if __name__ == "__main__":
    run_config, *numbers = sys.argv[1:5]
    print(json.dumps(cold_call(run_config, *map(int, numbers))))
