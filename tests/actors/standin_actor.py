"""A RenderActor stand-in that loads no model and renders nothing: for tests of the scheduler
alone, where the work of a render does not matter. Registered with Ray's cloudpickle to travel by
value (Ray workers cannot import tests/)."""

from __future__ import annotations

import os
import sys
import threading

import ray.cloudpickle

from horse_actors import RenderActor, RenderOutcome
from horse_actors.actor import _ray_context


class InstantActor(RenderActor):
    def __init__(self, model, store, encoding=None):
        self.renders, self.ids = 0, _ray_context()
        self._recent = {}
        self._calls, self._running = threading.Condition(), set()  # RenderActor.render's call bookkeeping

    def stats(self):
        return {**self.ids, "pid": os.getpid(), "device": "none", "load_s": 0.0, "renders": self.renders}

    def _render(self, job, attempt, submitted_at):
        with self._calls:  # overlapping calls (Scheduling.overlap) count under the lock
            self.renders += 1
        return RenderOutcome(render_key=job.render_key, status="ok", attempt=attempt, pid=os.getpid(), **self.ids)


ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
