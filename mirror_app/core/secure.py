"""Secure aggregation's encoding: the per-group weighted mean as two sums that SecAgg+ can compute.

SecAgg+ (Flower's ``SecAggPlusWorkflow`` on the server, ``secaggplus_mod`` on the clients) hands the server the
sum of the clients' vectors and nothing else. A parameter group is averaged over exactly the clients that trained
it, weighted by their example counts: ``new_g = current_g + (sum_i w_ig d_ig) / (sum_i w_ig)`` with ``d_ig`` client
i's update of group g (its trained weights minus those it received). So every client of a round sends one flat
vector in the round's layout (the groups any client of the phase trains, as the server names them): for each
group its update times ``w_ig / scale`` (zeros for a group it did not train), then its weights ``w_ig / scale``
(0 for the same), then how many of its values lie beyond the clipping range, as a share of the vector times the
range (so the server learns only the round's total). ``scale`` is the run's public ``secagg-max-examples``, at which
a count is capped: every weight lies in [0, 1], and no count is ever sent in the clear. The server divides the
summed updates by the summed weights, group by group. Integer arrays (counters such as BatchNorm's
``num_batches_tracked``, which tell how many batches a client trained) are never released: the vector holds zeros
for them and the server keeps its own value.

Flower's workflow weighs each client's whole vector by one number (its ``num_examples``): the clients send 1, so
it sums the vectors unweighted. It clips every value to +- the clipping range and quantises it (stochastic
rounding) to ``quantization_range`` levels: a value beyond the range is clipped, which the client counts and
reports (reply metric ``secure-clipped``); the rounding error of a round's mean is at most n steps of
``2 x range / levels`` divided by the group's summed weight.
"""

from __future__ import annotations

import numpy as np

LAYOUT = "secure-layout"  # fit config: the round's groups as "state key:values;..." in the order of the vector
SLOT = "secure-slot"  # fit config: the state slot of this client's groups ("" for the main model)
SKIPPED = "secure-skipped"  # fit config: the groups the round does not update (too few contributors), for the log
MODULUS = 2**32  # SecAgg+'s modulus range (Flower's default)

Layout = list[tuple[str, int]]  # (state key, number of values)


def layout_text(layout: Layout) -> str:
    return ";".join(f"{key}:{size}" for key, size in layout)


def parse_layout(text: str) -> Layout:
    out = []
    for item in (t for t in str(text).split(";") if t):
        key, _, size = item.rpartition(":")
        out.append((key, int(size)))
    return out


def quantization_range(clients: int) -> int:
    """The most quantisation levels (a power of two) at which ``clients`` quantised values still sum below the
    modulus (SecAgg+ adds them, and their weights, mod 2^32)."""
    levels = 1
    while clients * levels * 2 < MODULUS:
        levels *= 2
    return levels


def _values(a: np.ndarray) -> np.ndarray:
    """An array's values as the vector carries them: floating point as they are, integers (counters) as zeros."""
    a = np.asarray(a)
    return a.astype(np.float64).ravel() if np.issubdtype(a.dtype, np.floating) else np.zeros(a.size)


def encode(
    layout: Layout,
    slot: str,
    updates: dict[str, list[np.ndarray]],
    weights: dict[str, float],
    scale: float,
    clipping_range: float,
) -> tuple[np.ndarray, int]:
    """One client's vector: for each state key of ``layout``, its update of that group (``updates``: group name ->
    arrays of trained minus received weights, keyed without the slot) times ``min(weights[group], scale) / scale``,
    zeros where it did not train the group (or the round skips it: not in the layout); then one weight per key; then
    its clipped values' share times ``clipping_range``. Returns the vector and how many of its values lie beyond
    +- ``clipping_range`` (SecAgg+ clips them)."""
    parts, scaled = [], []
    for key, size in layout:
        group = key[len(slot) :] if slot and key.startswith(slot) else (key if not slot else "")
        w = min(weights.get(group, 0.0), scale) / scale if group in updates else 0.0
        if w > 0:
            flat = np.concatenate([_values(a) for a in updates[group]]) * w
            if flat.size != size:
                raise ValueError(f"group {group}: {flat.size} values, the round's layout says {size}")
        else:
            flat = np.zeros(size)
        parts.append(flat)
        scaled.append(w)
    body = np.concatenate([*parts, np.asarray(scaled, dtype=np.float64)])
    clipped = int(np.count_nonzero(np.abs(body) > clipping_range))
    share = clipping_range * clipped / max(body.size, 1)
    return np.concatenate([body, [share]]), clipped


def vector_size(layout: Layout) -> int:
    """Values in a client's vector for ``layout``: the groups', one weight per group, the clipped share."""
    return sum(size for _, size in layout) + len(layout) + 1


def clipped_total(total: np.ndarray, layout: Layout, clipping_range: float) -> float:
    """How many values the round's clients had beyond the clipping range, all together, from the summed vector."""
    return float(total[-1]) * (vector_size(layout) - 1) / clipping_range


def decode(
    total: np.ndarray, layout: Layout, current: dict[str, list[np.ndarray]]
) -> tuple[dict[str, list[np.ndarray]], dict[str, float]]:
    """The new value of every group some client trained (summed weight > 0) from the sum ``total`` of the round's
    vectors, and each key's summed weight (in units of the round's scale). Integer arrays keep their value."""
    sizes = [size for _, size in layout]
    if total.size != vector_size(layout):
        raise ValueError(f"the summed vector has {total.size} values; the layout needs {vector_size(layout)}")
    weights = total[sum(sizes) : sum(sizes) + len(layout)]
    out, summed, start = {}, {}, 0
    for (key, size), w in zip(layout, weights):
        flat = total[start : start + size]
        start += size
        summed[key] = float(w)
        if w <= 0:
            continue
        mean, arrays, at = flat / w, [], 0
        for a in current[key]:
            step = mean[at : at + a.size].reshape(a.shape)
            at += a.size
            # np.asarray: a 0-d array (an ETF head's temperature) plus a step is a NumPy scalar, not an array
            arrays.append(np.asarray(a + step, dtype=a.dtype) if np.issubdtype(a.dtype, np.floating) else a.copy())
        out[key] = arrays
    return out, summed
