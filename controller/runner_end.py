"""How a DistributedRun ends: normally once every agent is done (or lost for good), or
early when its run directory refuses a write.

A refused write (disk full, I/O error) ends the run FAILED with that error as its reason
(``write_error``, naming the file and errno): agents are stopped, the journal keeps every
record written before it (the journal refuses everything after, so reports received later
are merged nowhere), intervals still reach listeners, and the summary is built in memory and
written if the disk takes it.  The end is recorded in this order: outputs closed, summary
written, FINISHED journaled, so a journal that says finished has its summary.
"""
import asyncio
import logging
import time

from loadgate.controller.run_journal import RecordKind, RunDirWriteError
from loadgate.controller.runner_session import AgentState, RunStatus
from loadgate.controller.runner_summary import build_summary, render_summary

log = logging.getLogger("loadgate.controller")

NS = 1_000_000_000


class RunEndMixin:
    """Mixed into DistributedRun; uses its sessions, ingest, run directory and status."""

    async def _journal_and_merge(self):
        batch = self.ingest.take()
        if batch:
            try:
                # The fsync runs off the loop so heartbeats keep their rhythm while the disk
                # works.
                await asyncio.to_thread(self.ingest.journal_batch, batch)
            except RunDirWriteError as exc:
                # Nothing is merged that was not journaled first.
                self._write_failed(exc)
                return
            self._emit(self.ingest.merge(batch))

    def _journal(self, kind, **fields):
        """Appends a record to the journal; a failed write ends the run instead of the
        caller (load must still be stopped, a lost agent still handled)."""
        try:
            self.run_dir.journal.append(kind, **fields)
        except RunDirWriteError as exc:
            self._write_failed(exc)

    def _write_failed(self, exc):
        # The first refused write decides the run's end; the journal refuses everything after.
        if self.write_error is not None:
            return
        self.write_error = exc
        log.error("run %s: %s", self.run_id, exc)
        if not self._done.is_set() and self.status is not RunStatus.FINISHING:
            self._spawn(self._end_after_write_error())

    async def _end_after_write_error(self):
        await self._stop_agents(str(self.write_error))
        # Their final reports could no longer be journaled, so they can never be merged.
        for s in self.sessions:
            if s.state in (AgentState.RUNNING, AgentState.PREPARED):
                s.state = AgentState.UNFINISHED
        await self._finish()

    def _check_end(self):
        states = {s.state for s in self.sessions}
        if self._done.is_set() or AgentState.RUNNING in states:
            return
        # A lost agent may come back with its intervals while its shard would still be
        # running; unless the run is being stopped anyway, wait that long for it.
        if AgentState.LOST in states and not self._stopping:
            definition = self.definition
            wait_s = definition.duration_s + definition.timeout_s + definition.interval_s
            if time.time_ns() < self.start_ns + int(wait_s * NS):
                return
        self._spawn(self._finish())

    async def _finish(self):
        if self._done.is_set() or self.status is RunStatus.FINISHING:
            return
        previous, self.status = self.status, RunStatus.FINISHING
        try:
            # Under the ingest lock: no report is journaled after FINISHED, none merged after
            # the summary was taken.
            async with self._ingest_lock:
                await self._journal_and_merge()
                self._mark_finished()
                self._emit(self.ingest.merger.finish())
                self.status = self._final_status(previous)
                self._conclude()
        finally:
            if self.status is RunStatus.FINISHING:
                self.status = RunStatus.FAILED
            self._done.set()
            for queue in self._queues:
                queue.put_nowait(None)

    def _final_status(self, previous):
        if self.write_error is not None:
            self.stop_reason = str(self.write_error)
            return RunStatus.FAILED
        if previous is not RunStatus.RUNNING:
            return previous
        if not any(s.state is AgentState.FINISHED for s in self.sessions):
            self.stop_reason = "no agent finished its shard"
            return RunStatus.FAILED
        return RunStatus.COMPLETED

    def _conclude(self):
        self.finished_ns = time.time_ns()
        self._summary = build_summary(self)
        if not self._record_end() and self.status is not RunStatus.FAILED:
            # A run whose end is not on disk failed, whatever its load did.
            self.status = RunStatus.FAILED
            self.stop_reason = str(self.write_error)
            self._summary = build_summary(self)
            self._record_end()

    def _record_end(self):
        """Closes the outputs, writes the summary, then journals FINISHED (last, so a journal
        that says finished has its summary); False if the disk refused any of it."""
        try:
            self.run_dir.close_outputs()
            self.run_dir.write_summary(self._summary, render_summary(self._summary))
            self.run_dir.journal.append(RecordKind.FINISHED, status=self.status.value,
                                        reason=self.stop_reason)
        except RunDirWriteError as exc:
            self._write_failed(exc)
            return False
        return True
