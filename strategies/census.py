"""Who takes part: the connected nodes, their modality and partition (asked once per node), and the
draw of a round's clients: a fixed number, or (central DP's default) each client on its own with probability q."""

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


def round_random(seed: int, server_round: int, secret: bool = False) -> random.Random:
    """The randomness of a round's draw: from the seed and round (the same clients in every run of a seed), or,
    ``secret``, from the operating system's entropy (a differentially private run: nobody can recompute who was
    drawn, which amplification by sampling assumes)."""
    return random.SystemRandom() if secret else random.Random(seed * 100_003 + server_round)


def draw_clients(
    seed: int, server_round: int, eligible: list, k: int, secret: bool = False, poisson: bool = False
) -> list:
    """The clients of a round: ``k`` of ``eligible`` (ordered by partition id), or with ``poisson`` each of them on
    its own with probability q = k / len(eligible) (Binomial(len(eligible), q) of them, possibly none); drawn from
    the seed and round, or from the operating system's entropy when ``secret``."""
    rng = round_random(seed, server_round, secret)
    if poisson:
        q = min(1.0, k / len(eligible)) if eligible else 0.0
        return [c for c in eligible if rng.random() < q]
    return rng.sample(eligible, min(k, len(eligible)))


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


def node_key(cid: str) -> tuple[int, int, str]:
    """Sort key of a node ID: Flower's are integers written as strings."""
    return (0, int(cid), "") if cid.isdigit() else (1, 0, cid)


class Census:
    """The nodes of a run and what each reported (``properties``: node id -> {"modality", "partition-id",
    "num-examples", "num-classes"}), and the seeded draw of each round's clients.

    ``full`` census: every node is asked once before round 1, and clients are drawn from the nodes ordered by
    partition id, so that a seed gives the same clients in every run (Flower draws node IDs at random per run).
    ``sampled`` census (thousands of nodes): nobody is asked up front; a round draws among the connected nodes
    (by node ID, so two runs with one seed draw different partitions) and asks only the drawn ones it does not
    know. A phase that only some clients can do (distillation: audiovisual ones) draws among the nodes known to
    qualify, topped up from nodes not asked yet. Every reply updates what the census knows (:meth:`heard`), and
    no node is asked twice. ``auto``: full up to ``FULL_CENSUS_UP_TO`` nodes."""

    def __init__(self, clients_per_round: int, mode: str = "full", secret: bool = False, poisson: bool = False) -> None:
        self.clients_per_round = clients_per_round
        self.mode = mode
        self.secret = secret  # draws from the operating system's entropy (differential privacy)
        self.poisson = poisson  # each eligible client drawn on its own (central DP's sampling; a full census)
        self.properties: dict[str, dict] = {}
        self.asked: set[str] = set()
        self.partitions: dict | None = None  # partition_summary of the nodes first known
        self.nodes = 0  # connected nodes at round 1
        self._waited = False

    def connect(self, client_manager: ClientManager) -> dict[str, ClientProxy]:
        """The connected clients (before round 1, once enough are there or their number settled); settles
        ``auto`` into ``full`` or ``sampled`` by their number."""
        from mirror_app.core.config import FULL_CENSUS_UP_TO

        clients = self._connected(client_manager)
        if not self.nodes:
            self.nodes = len(clients)
            if self.mode == "auto":
                self.mode = "full" if self.nodes <= FULL_CENSUS_UP_TO else "sampled"
            log(INFO, "census: %s over %d nodes", self.mode, self.nodes)
        return clients

    def take(self, client_manager: ClientManager) -> dict[str, ClientProxy]:
        """The connected clients; a full census asks every new one for its modality and partition."""
        clients = self.connect(client_manager)
        if self.mode == "full":
            self._query([c for c in clients if c not in self.asked], clients)
            self._summarise()
        return clients

    def draw(self, clients: dict[str, ClientProxy], server_round: int, seed: int, takes) -> tuple[list[str], int]:
        """The clients of a round and the number it drew from: ``clients_per_round`` of the nodes whose modality
        ``takes`` (modality -> bool) accepts."""
        k = self.clients_per_round
        if self.mode == "full":
            pool = sorted(
                (c for c in clients if c in self.properties and takes(self.properties[c]["modality"])), key=self.order
            )
            return draw_clients(seed, server_round, pool, k, self.secret, self.poisson), len(pool)
        if takes(AUDIO) and takes(AUDIOVISUAL):  # any node will do: draw among all, ask the unknown drawn ones
            nodes = sorted(clients, key=node_key)
            drawn = draw_clients(seed, server_round, nodes, k, self.secret)
            self._query([c for c in drawn if c not in self.asked], clients)
            self._summarise()
            return sorted((c for c in drawn if c in self.properties), key=self.order), len(nodes)
        known = [c for c in clients if c in self.properties and takes(self.properties[c]["modality"])]
        unknown = [c for c in sorted(clients, key=node_key) if c not in self.asked]
        order = round_random(seed, server_round, self.secret).sample(unknown, len(unknown))
        while len(known) < k and order:  # top up from nodes not asked yet, a few more than needed at a time
            batch, order = order[: 2 * (k - len(known))], order[2 * (k - len(known)) :]
            self._query(batch, clients)
            known += [c for c in batch if c in self.properties and takes(self.properties[c]["modality"])]
        self._summarise()
        pool = sorted(known, key=self.order)
        return draw_clients(seed, server_round, pool, k, self.secret), len(pool)

    def _summarise(self) -> None:
        if self.partitions is None and self.properties:
            self.partitions = partition_summary(list(self.properties.values()))
            self.partitions["nodes"] = self.nodes
            line = partition_line(self.partitions)
            if self.mode == "sampled":
                line += f" (the {len(self.properties)} asked so far of {self.nodes} nodes: a sampled census)"
            log(INFO, "%s", line)

    def summary(self) -> dict:
        """For summary.json: the census mode, the nodes connected at round 1, and how many of them were asked."""
        return {"mode": self.mode, "nodes": self.nodes, "asked": len(self.asked)}

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
        cids = [c for c in cids if c not in self.asked]
        self.asked.update(cids)
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
                else:
                    self.asked.discard(cid)  # no answer: asked again when it is next needed
