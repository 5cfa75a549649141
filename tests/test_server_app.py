"""The ServerApp's grid looks for replies sooner than Flower's (every 3 s deployed, 0.1 s simulated)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mirror_app import server_app
from mirror_app.server_app import POLL_FIRST, POLL_LONGEST, PromptGrid


class SlowGrid:
    """A grid whose reply to message i appears at pull number ``ready[i]``."""

    def __init__(self, ready: list[int]):
        self.ready, self.pulls, self.pushed = ready, 0, []

    def push_messages(self, messages):
        self.pushed += list(messages)
        return [f"m{i}" for i in range(len(self.pushed))]

    def pull_messages(self, ids):
        self.pulls += 1
        return [
            SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=mid))
            for mid in sorted(ids)
            if self.ready[int(mid[1:])] <= self.pulls
        ]


@pytest.fixture
def sleeps(monkeypatch):
    out: list[float] = []
    monkeypatch.setattr(server_app.time, "sleep", out.append)
    return out


def test_replies_are_collected_with_pauses_growing_to_a_cap(sleeps):
    grid = SlowGrid([3, 12])
    replies = list(PromptGrid(grid).send_and_receive(["a", "b"]))
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1"]
    assert grid.pulls == 12 and len(sleeps) == 11  # no pause after the last reply
    assert sleeps[0] == POLL_FIRST and sleeps[1] == pytest.approx(1.5 * POLL_FIRST)
    assert max(sleeps) == POLL_LONGEST and sleeps[-1] == POLL_LONGEST
    assert all(b >= a for a, b in zip(sleeps, sleeps[1:]))


def test_an_in_memory_grid_is_polled_at_the_shortest_pause(sleeps):
    grid = SlowGrid([10])
    grid.pull_interval = 0.1  # what Flower's in-memory (simulation) grid has
    list(PromptGrid(grid).send_and_receive(["a"]))
    assert sleeps == [POLL_FIRST] * 9


def test_a_timeout_returns_the_replies_so_far(monkeypatch):
    clock = iter(range(1000))
    monkeypatch.setattr(server_app.time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(server_app.time, "sleep", lambda s: None)
    grid = SlowGrid([1, 10_000])
    replies = list(PromptGrid(grid).send_and_receive(["a", "b"], timeout=5))
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"] and grid.pulls < 10


def test_the_app_hands_flower_a_prompt_grid(monkeypatch):
    seen = []
    monkeypatch.setattr(server_app.ServerApp, "__call__", lambda self, grid, context: seen.append(grid))
    inner = SlowGrid([1])
    server_app.app(inner, None)
    assert isinstance(seen[0], PromptGrid) and seen[0].grid is inner
