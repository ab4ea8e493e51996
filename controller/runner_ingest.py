"""The controller's ingest path for interval reports: check, journal, merge, in that order.

``accept`` runs as each report arrives (parse, check, advance the agent's stream); what it
accepts waits in a batch.  ``take`` hands the batch over, ``journal_batch`` writes it with
one fsync (it may run on another thread), and only then ``merge`` decodes the histograms
into the run.  A crash between the steps loses nothing that was merged: anything merged was
journaled first.  A report whose histograms turn out not to decode is discarded whole by the
merge and journaled as such (DISCARDED), so the journal's accepted reports
(``run_journal.accepted_reports``) are exactly what was merged.
"""
from google.protobuf.message import DecodeError

from loadgate.controller.run_journal import BLOB_FIELD, RecordKind, report_fields
from loadgate.controller.runner_reports import RejectReason, Rejection
from loadgate.proto.loadgate.v1 import common_pb2


class ReportIngest:
    """Feeds accepted reports of every agent into one merger and the run totals."""

    def __init__(self, journal, merger, totals):
        self.journal = journal
        self.merger = merger
        self.totals = totals
        self.rejections = []  # every Rejection, in the order they were decided
        self.journaled_seq = {}  # agent id -> highest seq of its reports durably journaled
        self._batch = []  # (record kind, fields, AgentInterval or None)

    def accept(self, stream, payload):
        """Parses and checks one serialized IntervalReport from ``stream``'s agent.

        Returns the AgentInterval (queued for journaling and merging) or a Rejection (queued
        for journaling only); the stream advances only past an accepted report."""
        try:
            report = common_pb2.IntervalReport.FromString(payload)
        except DecodeError as exc:
            result = Rejection(stream.agent_id, 0, -1, RejectReason.MALFORMED,
                               f"not an IntervalReport: {exc}")
        else:
            result = stream.check(report)
        if isinstance(result, Rejection):
            self.rejections.append(result)
            fields = result.to_dict()
            fields[BLOB_FIELD] = report_fields(stream.agent_id, result.seq,
                                               result.interval_index, payload)[BLOB_FIELD]
            self._batch.append((RecordKind.REJECTED, fields, None))
            return result
        stream.commit(result)
        self._batch.append((RecordKind.REPORT,
                            report_fields(stream.agent_id, result.seq, result.index, payload),
                            result))
        return result

    def replay(self, stream, payload):
        """Re-merges a REPORT read back from the journal (a resumed run): returns the merged
        intervals that became complete, or a Rejection if the journal disagrees with itself.
        A report the live run discarded is discarded again, without a second record."""
        result = stream.check(common_pb2.IntervalReport.FromString(payload))
        if isinstance(result, Rejection):
            return result
        stream.commit(result)
        self._journaled((result,))
        return self._merge_one(result, journaled=True)

    def take(self):
        """The batch accepted so far (to pass to ``journal_batch`` and then ``merge``)."""
        batch, self._batch = self._batch, []
        return batch

    def journal_batch(self, batch):
        """Writes a batch to the journal with one fsync; safe to run on a worker thread."""
        if batch:
            self.journal.append_many([(kind, fields) for kind, fields, _ in batch])
            self._journaled(interval for _, _, interval in batch if interval is not None)

    def merge(self, batch):
        """Merges a journaled batch; returns the merged intervals that became complete."""
        ready = []
        for _, _, interval in batch:
            if interval is not None:
                ready.extend(self._merge_one(interval))
        return ready

    def ingest_now(self, stream, payload):
        """accept + journal + merge of one report, synchronously (tests and benchmarks):
        returns (the AgentInterval or Rejection, the merged intervals that became complete)."""
        result = self.accept(stream, payload)
        batch = self.take()
        self.journal_batch(batch)
        refused = len(self.rejections)
        ready = self.merge(batch)
        return (self.rejections[-1] if len(self.rejections) > refused else result), ready

    def _journaled(self, intervals):
        for interval in intervals:
            if interval.seq > self.journaled_seq.get(interval.agent_id, 0):
                self.journaled_seq[interval.agent_id] = interval.seq

    def _merge_one(self, interval, journaled=False):
        ready = self.merger.add(interval)
        if interval.refused is None:
            self.totals.add(interval)
            return ready
        self.totals.discard(interval)
        rejection = Rejection(interval.agent_id, interval.seq, interval.index,
                              RejectReason.BAD_HISTOGRAM, interval.refused)
        self.rejections.append(rejection)
        if not journaled:
            self.journal.append(RecordKind.DISCARDED, **rejection.to_dict())
        return ready
