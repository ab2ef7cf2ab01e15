"""The run's accelerator busy/idle line: from each actor's latest outcome, in the markdown summary."""

from __future__ import annotations

from flows.progress import RunTotals
from flows.report import summary_markdown
from horse_actors import RenderOutcome


def outcome(actor: str, busy: float, wall: float, device: str = "cpu") -> RenderOutcome:
    return RenderOutcome(render_key=f"{actor}{wall}", status="ok", actor_id=actor, device_type=device,
                         accelerator={"busy_s": busy, "wall_s": wall})


def test_each_actor_counts_once_with_its_latest_totals_and_the_summary_says_the_share():
    totals = RunTotals(planned=5)
    # outcomes arrive out of order; each carries its actor's totals so far
    for o in (outcome("a", 6.0, 8.0), outcome("a", 3.0, 4.0), outcome("b", 2.0, 5.0), outcome("b", 1.0, 2.0),
              RenderOutcome(render_key="api", status="ok")):   # an API render: no accelerator of ours
        totals.add(o)
    use = totals.accelerator()
    assert (use["actors"], use["busy_s"], use["wall_s"]) == (2, 8.0, 13.0)
    assert use["per_actor_busy_share"] == [0.4, 0.75]
    summary = summary_markdown("c", 1, totals, "file:///s", None, [], None, None)
    assert "**Accelerator:** accelerator busy 62%, idle 38% (cpu; model stages over 2 actors' time" in summary
    assert "per actor 40% / 75%" in summary and "share the same cores" in summary
    gpu = RunTotals()
    gpu.add(outcome("g", 9.0, 10.0, "NVIDIA H200"))
    assert "same cores" not in summary_markdown("c", 1, gpu, "file:///s", None, [], None, None)
    assert "Accelerator" not in summary_markdown("c", 1, RunTotals(), "file:///s", None, [], None, None)
