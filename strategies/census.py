"""Who takes part: the connected nodes, their modality and partition (asked once per node), and the
seeded draw of a round's clients."""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from logging import INFO, WARNING

import numpy as np
from flwr.common import GetPropertiesIns, log
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy

from data.partition import AUDIO, AUDIOVISUAL
from mirror_app.core.config import ConfigError

NODE_WAIT_SECONDS = 120.0  # longest wait for enough nodes before round 1
NODE_SETTLE_SECONDS = 10.0  # stop waiting once the node count has not changed this long


def draw_clients(seed: int, server_round: int, eligible: list, k: int) -> list:
    """The clients of a round: ``k`` of ``eligible`` (ordered by partition id), drawn from the seed and round."""
    return random.Random(seed * 100_003 + server_round).sample(eligible, min(k, len(eligible)))


def partition_summary(properties: list[dict]) -> dict:
    """How the data is spread over the clients (their reported properties): counts per modality, clips per
    client and distinct classes per client (min / median / max; None where no client reported it)."""

    def spread(key: str) -> dict | None:
        values = [int(p[key]) for p in properties if key in p]
        if not values:
            return None
        return {"min": min(values), "median": float(np.median(values)), "max": max(values)}

    modalities = [p.get("modality") for p in properties]
    return {
        "clients": len(properties),
        "audio_only": modalities.count(AUDIO),
        "audiovisual": modalities.count(AUDIOVISUAL),
        "clips": spread("num-examples"),
        "classes": spread("num-classes"),
    }


def partition_line(summary: dict) -> str:
    """``partition_summary`` as one log line."""

    def span(what: str) -> str:
        s = summary[what]
        return "n/a" if s is None else f"min {s['min']} / median {s['median']:g} / max {s['max']}"

    return (
        f"partitions: {summary['clients']} clients ({summary['audio_only']} audio-only, "
        f"{summary['audiovisual']} audiovisual); clips per client {span('clips')}; "
        f"classes per client {span('classes')}"
    )


class Census:
    """The nodes of a run and what each reported (``properties``: node id -> {"modality", "partition-id",
    "num-examples", "num-classes"})."""

    def __init__(self, clients_per_round: int) -> None:
        self.clients_per_round = clients_per_round
        self.properties: dict[str, dict] = {}
        self.partitions: dict | None = None  # partition_summary of the nodes first queried
        self._waited = False

    def heard(self, cid: str, metrics: dict) -> None:
        """A reply from ``cid``: its ``modality`` (what the device has now) replaces what the census knew, so a
        client that lost its camera is not sent a video task again, and one that got it back is."""
        modality = metrics.get("modality")
        if cid in self.properties and modality in (AUDIO, AUDIOVISUAL):
            if self.properties[cid].get("modality") != modality:
                log(INFO, "client %s now reports modality %s", cid, modality)
            self.properties[cid]["modality"] = str(modality)

    def audio_only_share(self) -> float:
        """The share of the known clients that have no video, as their latest answers say."""
        known = [p.get("modality") for p in self.properties.values()]
        return known.count(AUDIO) / len(known) if known else 0.0

    def order(self, cid: str) -> tuple[int, str]:
        """Sort key of a node: its partition id (stable across runs), then its node id."""
        return int(self.properties.get(cid, {}).get("partition-id", -1)), cid

    def take(self, client_manager: ClientManager) -> dict[str, ClientProxy]:
        """The connected clients, every new one asked once for its modality and partition. Clients are
        later drawn from the nodes ordered by partition id, so that a seed gives the same clients in every
        run (Flower draws node IDs at random per run). The first call logs the partition summary."""
        clients = self._connected(client_manager)
        self._query([c for c in clients if c not in self.properties], clients)
        if self.partitions is None and self.properties:
            self.partitions = partition_summary(list(self.properties.values()))
            log(INFO, "%s", partition_line(self.partitions))
        return clients

    def _connected(self, client_manager: ClientManager) -> dict[str, ClientProxy]:
        """Connected clients; before round 1, wait until enough nodes are there or their number settles."""
        if not self._waited:
            self._waited = True
            deadline = time.monotonic() + NODE_WAIT_SECONDS
            seen, since = -1, time.monotonic()
            while time.monotonic() < deadline:
                count = client_manager.num_available()
                if count >= self.clients_per_round:
                    break
                if count != seen:
                    seen, since = count, time.monotonic()
                elif time.monotonic() - since > NODE_SETTLE_SECONDS:
                    break
                time.sleep(0.5)
            count = client_manager.num_available()
            if count < self.clients_per_round:
                raise ConfigError(
                    f"run config 'clients-per-round' = {self.clients_per_round} is invalid: only "
                    f"{count} SuperNodes are connected (simulate more with "
                    f'`flwr run . --federation-config "num-supernodes=N"`, or lower clients-per-round)'
                )
        return client_manager.all()

    def _query(self, cids: list[str], clients: dict[str, ClientProxy]) -> None:
        """Ask clients for their modality and partition (once per client, in parallel)."""
        if not cids:
            return
        ins = GetPropertiesIns(config={})

        def ask(cid: str):
            try:
                return cid, clients[cid].get_properties(ins, timeout=None, group_id=0).properties
            except Exception as exc:  # a client that cannot answer is skipped this round
                log(WARNING, "client %s did not report its modality: %s", cid, exc)
                return cid, None

        with ThreadPoolExecutor(max_workers=min(32, len(cids))) as pool:
            for cid, props in pool.map(ask, cids):
                if props and props.get("modality") in (AUDIO, AUDIOVISUAL):
                    self.properties[cid] = dict(props)
