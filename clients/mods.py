"""Flower client mods around every method's client, which know nothing of them: secure aggregation, simulated
attackers and local differential privacy. The ClientApp runs them as
``ClientApp(client_fn, mods=[secure_aggregation_mod, attack_mod, local_dp_mod])``, outermost first: what leaves the
device under secure aggregation is the masked encoding of whatever the layers inside (an attacker's reply, a
locally noised update) made.

**Secure aggregation** (``secure-aggregation``): Flower's ``secaggplus_mod``; the reply is first encoded as the
round's vector (mirror_app/core/secure.py), so the server learns only the sum of the round's weighted updates; the
example count goes inside the vector, and the reply's metrics are cut to the client's identity (:func:`disclosed`).

**Attacks** (run config ``attack``, ``attack-fraction``, ``attack-scale``, ``attack-std``). In a simulation, the
partitions of ``data.partition.attacked_partitions`` (a seeded set, recorded in summary.json) attack. A deployed
SuperNode attacks only when its own node config says so (``--node-config "attack='sign-flip'"``, with optional
``attack-scale`` / ``attack-std``); the server's run config never makes a real node attack. With Δ the client's
update of a group (its trained weights minus those it received):

* ``sign-flip``: sends received - Δ; ``scale``: received + attack-scale x Δ; ``gaussian``: received plus Gaussian
  noise of std attack-std instead of its update; ``stale``: the weights it received, untrained;
* ``label-flip``: trains on labels permuted by a seeded permutation of the classes (the fit config key
  ``label-permutation``, which this mod alone sets and strips from what the server sends);
* ``inflate-count``: reports 100 x its examples, in its fit replies and in the properties the server asks for.

**Local DP** (``dp = local``): on the groups a client returns, :func:`mirror_app.core.privacy.local_release`: the
update (over all of its floating-point arrays) clipped to ``dp-clipping-norm`` C, then Gaussian noise of std
``dp-noise-multiplier`` x the sensitivity (``dp-neighbouring``: 2 C to hide a replaced client's data, C an added or
removed one), drawn from the operating system's entropy (with ``dp-insecure-seeded-noise``, in a simulation only,
from the run seed: no privacy). Integer arrays (counters) go back as received; the example count is sent as 1 and
the reply's metrics are cut to the client's identity: the server is the adversary the epsilon is stated against.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from flwr.app import Context, Message, MessageType
from flwr.client.mod import LocalDpMod
from flwr.common import FitIns, FitRes, GetPropertiesRes, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.constant import MessageTypeLegacy
from flwr.compat.common import recorddict_compat as compat

from data.partition import attacked_partitions
from mirror_app.core import secure
from mirror_app.core.config import ATTACKS, RunConfig
from mirror_app.core.groups import unflatten
from mirror_app.core.privacy import IDENTITY, REPLY_NEEDS, floating, hides_client_values, local_release, sensitivity

from .base import FIXED_ARRAYS, GROUP_EXAMPLES, LABEL_PERMUTATION, group_examples, received_groups

COUNT_FACTOR = 100  # inflate-count: reported examples x this


@lru_cache(maxsize=8)
def _config(items: tuple) -> RunConfig:
    return RunConfig.from_dict(dict(items))


def run_config(context: Context) -> RunConfig:
    return _config(tuple(sorted(context.run_config.items())))


def simulated() -> bool:
    """Whether this ClientApp runs inside a simulation (a Ray worker), not on a deployed SuperNode."""
    ray = sys.modules.get("ray")
    initialized = getattr(ray, "is_initialized", None)  # ray may be half-imported by another thread
    return bool(initialized and initialized())


@dataclass(frozen=True)
class Attack:
    kind: str
    scale: float
    std: float
    seed: int  # the attacker's own randomness (Gaussian noise, label permutation)


def attack_of(context: Context) -> Attack | None:
    """This node's attack, if it is an attacker: its node config's ``attack`` (deployed or simulated), else in a
    simulation the run config's, for the partitions of the seeded attacked set."""
    node = context.node_config
    defaults = RunConfig.default()
    if "attack" in node:
        kind = str(node["attack"])
        if kind not in ATTACKS:
            raise ValueError(f"node config 'attack' = {kind!r} is invalid: one of {list(ATTACKS)}")
        scale = float(node.get("attack-scale", defaults.attack_scale))
        std = float(node.get("attack-std", defaults.attack_std))
        return None if kind == "none" else Attack(kind, scale, std, int(node.get("partition-id", 0)))
    if not simulated() or "partition-id" not in node:
        return None
    cfg = run_config(context)
    if cfg.attack == "none" or cfg.attack_fraction <= 0:
        return None
    pid, num = int(node["partition-id"]), int(node["num-partitions"])
    if pid not in set(attacked_partitions(num, cfg.attack_fraction, cfg.seed).tolist()):
        return None
    return Attack(cfg.attack, cfg.attack_scale, cfg.attack_std, cfg.seed * 1_000_003 + pid)


def attacked_reply(attack: Attack, fit_ins: FitIns, res: FitRes) -> FitRes:
    """The reply an attacker sends instead of ``res`` (the honest one) to instruction ``fit_ins``."""
    if attack.kind == "inflate-count":
        return FitRes(res.status, res.parameters, res.num_examples * COUNT_FACTOR, res.metrics)
    if attack.kind not in ("sign-flip", "scale", "gaussian", "stale"):
        return res
    received = received_groups(parameters_to_ndarrays(fit_ins.parameters), fit_ins.config)
    names = [n for n in str(res.metrics.get("groups", "")).split(",") if n]
    sent = parameters_to_ndarrays(res.parameters)
    rng = np.random.default_rng([attack.seed, int(fit_ins.config.get("server-round", 0))])
    out, pos = [], 0
    for name in names:
        before = received.get(name)
        count = len(before) if before is not None else 0
        for i in range(count):
            w, r = sent[pos + i], before[i]
            if not np.issubdtype(w.dtype, np.floating) or w.shape != r.shape:
                out.append(w)
            elif attack.kind == "sign-flip":
                out.append((r - (w - r)).astype(w.dtype))
            elif attack.kind == "scale":
                out.append((r + attack.scale * (w - r)).astype(w.dtype))
            elif attack.kind == "gaussian":
                out.append((r + rng.normal(0.0, attack.std, r.shape)).astype(w.dtype))
            else:  # stale
                out.append(r.copy())
        pos += count
    out += sent[pos:]  # groups it was not sent (none in the methods here) go out as trained
    return FitRes(res.status, ndarrays_to_parameters(out), res.num_examples, res.metrics)


def attack_mod(msg: Message, context: Context, call_next) -> Message:
    """Makes this client an attacker where :func:`attack_of` says it is one; otherwise passes messages through,
    except that a ``label-permutation`` from the server is always removed."""
    kind = msg.metadata.message_type
    attack = attack_of(context)
    if kind == MessageType.TRAIN:
        fit_ins = compat.recorddict_to_fitins(msg.content, keep_input=True)
        config = {k: v for k, v in fit_ins.config.items() if k != LABEL_PERMUTATION}
        if attack is not None and attack.kind == "label-flip":
            config[LABEL_PERMUTATION] = attack.seed
        if config != fit_ins.config:
            fit_ins = FitIns(fit_ins.parameters, config)
            msg.content = compat.fitins_to_recorddict(fit_ins, keep_input=True)
        reply = call_next(msg, context)
        if attack is None or reply.has_error():
            return reply
        res = compat.recorddict_to_fitres(reply.content, keep_input=True)
        reply.content = compat.fitres_to_recorddict(attacked_reply(attack, fit_ins, res), keep_input=True)
        return reply
    reply = call_next(msg, context)
    if kind == MessageTypeLegacy.GET_PROPERTIES and attack is not None and attack.kind == "inflate-count":
        res = None if reply.has_error() else compat.recorddict_to_getpropertiesres(reply.content)
        if res is not None and "num-examples" in res.properties:  # a mode that sends no count: nothing to inflate
            props = dict(res.properties)
            props["num-examples"] = int(props["num-examples"]) * COUNT_FACTOR
            reply.content = compat.getpropertiesres_to_recorddict(GetPropertiesRes(res.status, props))
    return reply


def fixed_positions(names: list[str], sizes: list[int], text) -> set[int]:
    """Positions, in a reply's flat list of arrays (``names``' groups of ``sizes`` arrays each), of the arrays the
    server says nothing trains (``fixed-arrays``: 'group:i,j;...')."""
    per_group = {}
    for item in (t for t in str(text or "").split(";") if t):
        group, _, positions = item.rpartition(":")
        per_group[group] = {int(p) for p in positions.split(",") if p}
    out, start = set(), 0
    for name, size in zip(names, sizes):
        out |= {start + i for i in per_group.get(name, ())}
        start += size
    return out


def disclosed(metrics: dict, cfg: RunConfig) -> dict:
    """The reply metrics the run's mode lets the server see: all of them in plain runs and under central DP (the
    server is trusted there); under local DP and secure aggregation only the client's identity and which groups its
    reply carries (``core.privacy.IDENTITY``, ``REPLY_NEEDS``): no loss, timing, count or refusal reason."""
    if not hides_client_values(cfg.dp, cfg.secure_aggregation):
        return dict(metrics)
    out = {k: v for k, v in metrics.items() if k in (*IDENTITY, *REPLY_NEEDS, "task")}
    untrained = [g for g, n in group_examples(metrics).items() if n == 0]
    if untrained:  # which sent groups it could not train (no clip with a frame): names, no count
        out[GROUP_EXAMPLES] = ",".join(f"{g}:0" for g in untrained)
    return out


class GroupLocalDpMod(LocalDpMod):
    """Flower's LocalDpMod, applied to the groups a client returns (the reply holds the trained groups only, the
    instruction the sent ones, teacher copies included) with :func:`mirror_app.core.privacy.local_release`: the
    floating-point arrays of the update are clipped jointly to the clipping norm C, then Gaussian noise of std
    ``noise_multiplier`` x the sensitivity (2 C when the neighbouring relation replaces a client's data, C when it
    adds or removes it) is added from ``rng``, a generator of its own (LocalDpMod draws from NumPy's global one).
    Integer arrays go back as received (a counter would tell how many batches the client trained); a reply with no
    update (a refusal) stays empty. The example count goes out as 1, the metrics as :func:`disclosed` keeps them."""

    def __init__(
        self,
        clipping_norm: float,
        noise_multiplier: float,
        delta: float,
        neighbouring: str,
        rng: np.random.Generator,
        cfg: RunConfig | None = None,
    ) -> None:
        bound = sensitivity(clipping_norm, neighbouring)
        epsilon = float(np.sqrt(2 * np.log(1.25 / delta)) / noise_multiplier)  # LocalDpMod's std = sigma x bound
        super().__init__(clipping_norm=clipping_norm, sensitivity=bound, epsilon=epsilon, delta=delta)
        self.std = noise_multiplier * bound
        self.rng = rng
        self.cfg = cfg

    def __call__(self, msg: Message, ctxt: Context, call_next) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, ctxt)
        fit_ins = compat.recorddict_to_fitins(msg.content, keep_input=True)
        reply = call_next(msg, ctxt)
        if reply.has_error():
            return reply
        res = compat.recorddict_to_fitres(reply.content, keep_input=True)
        received = received_groups(parameters_to_ndarrays(fit_ins.parameters), fit_ins.config)
        names = [n for n in str(res.metrics.get("groups", "")).split(",") if n]
        sent = parameters_to_ndarrays(res.parameters)
        before = [a for name in names for a in received[name]]
        fixed = fixed_positions(names, [len(received[n]) for n in names], fit_ins.config.get(FIXED_ARRAYS, ""))
        floats = [i for i in floating(sent) if i not in fixed]  # a fixed classifier is never released
        released = local_release([sent[i] - before[i] for i in floats], self.clipping_norm, self.std, self.rng)
        for i, step in zip(floats, released):
            sent[i] = (before[i] + step).astype(sent[i].dtype)
        for i in set(range(len(sent))) - set(floats):
            sent[i] = before[i].copy()  # counters are never released
        metrics = disclosed(res.metrics, self.cfg) if self.cfg is not None else res.metrics
        res = FitRes(res.status, ndarrays_to_parameters(sent), 1, metrics)
        reply.content = compat.fitres_to_recorddict(res, keep_input=True)
        return reply


def insecure_noise_problem(cfg: RunConfig) -> str:
    """Why this process must not add DP noise seeded by the run ('' when it may): only a simulation may."""
    if cfg.dp != "off" and cfg.dp_insecure_seeded_noise and not simulated():
        return (
            "run config 'dp-insecure-seeded-noise' = True is invalid on a deployed node: anyone holding the run "
            "config could recompute the noise (it is for simulation studies only)"
        )
    return ""


def local_dp_mod(msg: Message, context: Context, call_next) -> Message:
    """``dp = local``: :class:`GroupLocalDpMod` with the run's clipping norm, noise multiplier, delta and
    neighbouring relation, its noise from the operating system's entropy (or, with ``dp-insecure-seeded-noise`` in a
    simulation, from the run seed, round and partition); any other setting passes messages through."""
    cfg = run_config(context)
    if cfg.dp != "local" or msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    problem = insecure_noise_problem(cfg)
    if problem:
        raise ValueError(problem)
    if cfg.dp_insecure_seeded_noise:
        round_ = int(compat.recorddict_to_fitins(msg.content, keep_input=True).config.get("server-round", 0))
        rng = np.random.default_rng([cfg.seed, round_, int(context.node_config.get("partition-id", 0))])
    else:
        rng = np.random.default_rng()
    mod = GroupLocalDpMod(cfg.dp_clipping_norm, cfg.dp_noise_multiplier, cfg.dp_delta, cfg.dp_neighbouring, rng, cfg)
    return mod(msg, context, call_next)


def _secure_encoded(call_next):
    """The ``call_next`` SecAgg+'s mod gets: the client's reply (trained groups, its example count) turned into
    the round's vector (``mirror_app.core.secure.encode``: every group of the layout, weighted by its count over the
    run's public ``secagg-max-examples``, then the weights, then its clipped share), reported with one example so
    that SecAgg+ sums the vectors unweighted, and with only the metrics :func:`disclosed` keeps."""

    def encoded(msg: Message, context: Context) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:  # SecAgg+ passes the census' queries through
            return call_next(msg, context)
        cfg = run_config(context)
        fit_ins = compat.recorddict_to_fitins(msg.content, keep_input=True)
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        res = compat.recorddict_to_fitres(reply.content, keep_input=True)
        config = fit_ins.config
        layout = secure.parse_layout(str(config[secure.LAYOUT]))
        slot = str(config.get(secure.SLOT, ""))
        names = [n for n in str(res.metrics.get("groups", "")).split(",") if n]
        untrained = [g for g, n in group_examples(res.metrics).items() if n == 0]
        if res.metrics.get("refused") or untrained or not names:
            # the server counted this client among the contributors of its groups: a vector of zeros would let a
            # group be summed from fewer than secure-min-clients real updates; leaving the round instead makes
            # SecAgg+ treat it as dropped, and the server checks the survivors before it unmasks
            why = res.metrics.get("refused") or f"it could not train {untrained or 'any group'}"
            raise RuntimeError(f"secure aggregation: this client leaves the round: {why}")
        updates, weights = {}, {}
        if names:
            received = received_groups(parameters_to_ndarrays(fit_ins.parameters), config)
            sent = parameters_to_ndarrays(res.parameters)
            lists = unflatten(sent, names, [len(received[n]) for n in names])
            updates = {n: [a - r for a, r in zip(lists[n], received[n])] for n in names}
            overrides = group_examples(res.metrics)
            weights = {n: float(overrides.get(n, res.num_examples)) for n in names}
        vector, _ = secure.encode(
            layout, slot, updates, weights, float(cfg.secagg_max_examples), cfg.secure_clipping_range
        )  # the clipped count travels inside the vector: the server learns the round's total only
        out = FitRes(res.status, ndarrays_to_parameters([vector]), 1, disclosed(res.metrics, cfg))
        reply.content = compat.fitres_to_recorddict(out, keep_input=True)
        return reply

    return encoded


def secure_aggregation_mod(msg: Message, context: Context, call_next) -> Message:
    """``secure-aggregation``: Flower's ``secaggplus_mod`` around the client, which sends only its masked, quantised
    vector (:func:`_secure_encoded`); the server learns the sum of the round's vectors, never one of them. Outermost
    of the mods: an attacker's or a local-DP client's reply is what gets encoded. Without it, messages pass."""
    if not run_config(context).secure_aggregation:
        return call_next(msg, context)
    from flwr.client.mod import secaggplus_mod

    return secaggplus_mod(msg, context, _secure_encoded(call_next))
