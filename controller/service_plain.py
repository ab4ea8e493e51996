"""A plain load run (``loadgate run`` of a plan without ``gates:``) as the Controller service
serves it, beside the readiness runs of service_runs.ManagedRun.

    served = PlainRun(run, loop, deployment_id)   # run: a DistributedRun driven on loop
    server = service_server.serve_run(served, "127.0.0.1:0")
    ...                                           # the run is prepared, started, waited for
    served.finish(); server.stop()

``PlainRun`` has what the service asks of a ManagedRun: a WatchHub fed with the run's merged
intervals (IntervalStats with every agent's GeneratorHealth, built only while someone
watches), a RunInfo without stages or verdict whose ``run_end`` tells how the run ended, and
``abort``, which stops the run as Ctrl-C does (on the run's event loop; the run still ends
normally and writes its summary).  There is nothing to approve (``approvable`` is False).
The service calls these from its gRPC threads; the run lives on its event loop.
"""
import asyncio
import logging
import time

from loadgate.controller.runner_session import RunStatus
from loadgate.controller.service_runs import publish_interval
from loadgate.controller.watch_hub import WatchHub
from loadgate.proto.loadgate.v1 import common_pb2, controller_pb2

log = logging.getLogger("loadgate.controller.service")

PHASE = "load"
RUN_END_OF_STATUS = {RunStatus.COMPLETED: common_pb2.RUN_END_COMPLETED,
                     RunStatus.STOPPED: common_pb2.RUN_END_STOPPED,
                     RunStatus.ABORTED: common_pb2.RUN_END_ABORTED,
                     RunStatus.FAILED: common_pb2.RUN_END_FAILED}


class PlainRun:
    """One DistributedRun behind the Controller service; see the module docstring."""

    approvable = False

    def __init__(self, run, loop, deployment_id="", *, queue_limit=None):
        self.run = run
        self.run_id = run.run_id
        self.run_dir = run.run_dir.path
        self.deployment_id = deployment_id
        self.loop = loop
        self._created_ns = time.time_ns()
        self._finished = False
        self.hub = WatchHub(self.run_info, **({"queue_limit": queue_limit} if queue_limit else {}))
        run.add_listener(self._on_interval)

    @property
    def finished(self):
        return self._finished

    def run_info(self):
        # Called under the hub's lock from gRPC threads: only reads of the run's attributes.
        status = self.run.status
        end = common_pb2.RUN_END_UNSPECIFIED
        if self._finished:
            # A run that never reached a final status (its prepare failed) failed.
            end = RUN_END_OF_STATUS.get(status, common_pb2.RUN_END_FAILED)
        return controller_pb2.RunInfo(
            run_id=self.run_id, deployment_id=self.deployment_id, run_dir=self.run_dir,
            started_unix_ns=self.run.start_ns or self._created_ns, finished=self._finished,
            run_end=end)

    def finish(self):
        """The run is over (its ``wait`` returned, or driving it failed): watchers get the
        final RunInfo and their streams end."""
        self.hub.update(self._mark_finished)
        self.hub.finish(self.run_info())

    def _mark_finished(self):
        self._finished = True

    def _on_interval(self, merged):
        publish_interval(self.hub, merged, self.run.weights, self._phase)

    def _phase(self):
        return PHASE

    def abort(self, who, why):
        reason = f"aborted by {who}: {why}"
        log.warning("run %s: %s", self.run_id, reason)
        self._stop(reason)

    def stop_load(self):
        """The server is going away while the run goes on: its load stops."""
        self._stop("the controller service stopped")

    def _stop(self, reason):
        try:
            asyncio.run_coroutine_threadsafe(self.run.stop(reason), self.loop)
        except RuntimeError:
            log.debug("run %s: its event loop is closed, nothing to stop", self.run_id)
