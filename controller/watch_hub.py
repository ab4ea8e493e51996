"""Fan-out of one run's WatchRun events to any number of watchers, never slowing the run.

A publisher (the thread driving the run, the event loop merging intervals) hands each event
to ``WatchHub.publish`` once; it is serialized once and appended to every watcher's queue
under one short lock, so its cost grows with the number of watchers by a deque append each,
and nothing the publisher does ever waits for a watcher.  A watcher's queue is bounded for
the events that may be lost (intervals): when it is full the oldest queued interval is
dropped and the watcher's ``skipped`` count grows.  Transitions, snapshots and the final
event are never dropped (a run has a bounded number of them).

Joining is atomic with publishing: ``subscribe`` takes the snapshot under the same lock that
``publish`` applies state changes under, so a watcher sees the state at its join and then
every later transition exactly once, in order.

    hub = WatchHub(snapshot)               # snapshot() -> controller_pb2.RunInfo
    hub.update(apply)                      # apply() changes the state, returns (kind, msg)
    hub.publish(EventKind.INTERVAL, stats) # an event that changes no snapshot state
    watcher = hub.subscribe()              # first event: the snapshot
    data = watcher.next(timeout_s)         # serialized RunEvent, or None (closed / timed out)
    hub.finish(run_info)                   # watchers drain, get `finished`, then None

``apply`` runs under the lock and its event is queued in the same step, so a snapshot never
shows a state whose transition a watcher will receive again, nor misses one.
"""
import collections
import enum
import threading

from loadgate.proto.loadgate.v1 import controller_pb2

DEFAULT_QUEUE_LIMIT = 64


class EventKind(enum.Enum):
    SNAPSHOT = "snapshot"
    TRANSITION = "transition"
    INTERVAL = "interval"
    FINISHED = "finished"

    @property
    def droppable(self):
        return self is EventKind.INTERVAL


class Watcher:
    """One watcher's queue of serialized events; read by one thread (its gRPC handler)."""

    def __init__(self, hub, queue_limit):
        self._hub = hub
        self._queue = collections.deque()
        self._queued_intervals = 0
        self.queue_limit = queue_limit
        self.skipped = 0
        self.closed = False

    def _push(self, kind, data):
        # Caller holds the hub lock.
        if kind.droppable:
            if self._queued_intervals >= self.queue_limit:
                self._drop_oldest_interval()
            self._queued_intervals += 1
        self._queue.append((kind, data))

    def _drop_oldest_interval(self):
        for position, (kind, _) in enumerate(self._queue):
            if kind.droppable:
                del self._queue[position]
                self._queued_intervals -= 1
                self.skipped += 1
                return

    def next(self, timeout_s=None):
        """The next serialized RunEvent (carrying the skipped count once there is one), or None
        when the stream is over (finished and drained, or closed) or ``timeout_s`` passed."""
        with self._hub._changed:
            if not self._queue and not self.closed:
                self._hub._changed.wait_for(lambda: self._queue or self.closed, timeout_s)
            if not self._queue:
                return None
            kind, data = self._queue.popleft()
            if kind.droppable:
                self._queued_intervals -= 1
            if kind is EventKind.FINISHED:
                self.closed = True
            skipped = self.skipped
        if skipped:
            # Concatenated protobuf messages merge: the event gains its skipped field without
            # being parsed and serialized again for each watcher.
            data += controller_pb2.RunEvent(skipped=skipped).SerializeToString()
        return data

    def events(self, timeout_s=None):
        """Iterates ``next`` until the stream is over."""
        while True:
            data = self.next(timeout_s)
            if data is None:
                return
            yield data

    def close(self):
        """Leaves the hub; a pending ``next`` returns None."""
        self._hub._leave(self)


class WatchHub:
    def __init__(self, snapshot, queue_limit=DEFAULT_QUEUE_LIMIT):
        self._snapshot = snapshot
        self.queue_limit = queue_limit
        self._changed = threading.Condition()
        self._watchers = []
        self._finished = None

    @property
    def watching(self):
        """True while someone watches: publishers skip building intervals nobody reads."""
        return bool(self._watchers)

    def watcher_count(self):
        with self._changed:
            return len(self._watchers)

    def snapshot_info(self):
        """The run's current state (RunInfo), consistent with the events published so far."""
        with self._changed:
            return self._snapshot()

    def subscribe(self, queue_limit=None):
        """A new Watcher whose first event is the run's current state."""
        watcher = Watcher(self, queue_limit or self.queue_limit)
        with self._changed:
            snapshot = self._snapshot()
            watcher._push(EventKind.SNAPSHOT, controller_pb2.RunEvent(
                snapshot=snapshot).SerializeToString())
            if self._finished is not None:
                watcher._push(EventKind.FINISHED, self._finished)
            else:
                self._watchers.append(watcher)
        return watcher

    def publish(self, kind, message):
        """Queues ``message`` (a Transition or IntervalStats, by kind) for every watcher,
        serialized once.  Never blocks on a watcher."""
        data = controller_pb2.RunEvent(**{kind.value: message}).SerializeToString()
        with self._changed:
            self._fan_out(kind, data)

    def update(self, apply):
        """Runs ``apply()`` under the lock that snapshots are taken under; if it returns
        (kind, message), that event is published in the same step."""
        with self._changed:
            event = apply()
            if event is not None:
                kind, message = event
                self._fan_out(kind, controller_pb2.RunEvent(
                    **{kind.value: message}).SerializeToString())

    def _fan_out(self, kind, data):
        if self._finished is not None or not self._watchers:
            return
        for watcher in self._watchers:
            watcher._push(kind, data)
        self._changed.notify_all()

    def finish(self, run_info):
        """Ends every stream after what is queued, with a ``finished`` event."""
        data = controller_pb2.RunEvent(finished=run_info).SerializeToString()
        with self._changed:
            if self._finished is not None:
                return
            self._finished = data
            for watcher in self._watchers:
                watcher._push(EventKind.FINISHED, data)
            self._watchers.clear()
            self._changed.notify_all()

    def close(self):
        """Ends every stream now (the server is going away)."""
        with self._changed:
            for watcher in self._watchers:
                watcher.closed = True
            self._watchers.clear()
            self._changed.notify_all()

    def _leave(self, watcher):
        with self._changed:
            watcher.closed = True
            if watcher in self._watchers:
                self._watchers.remove(watcher)
            self._changed.notify_all()
