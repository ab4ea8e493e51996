"""The WatchHub fan-out on its own: bounded queues, skip-ahead, never-dropped transitions,
snapshots atomic with publishing.  Real threads, real protobuf events."""
import threading

from loadgate.controller.watch_hub import EventKind, WatchHub
from loadgate.proto.loadgate.v1 import controller_pb2


class Counter:
    """A run state whose snapshot is the number of transitions applied so far."""

    def __init__(self):
        self.applied = 0

    def snapshot(self):
        return controller_pb2.RunInfo(run_id="run", started_unix_ns=self.applied)

    def transition(self):
        self.applied += 1
        return EventKind.TRANSITION, controller_pb2.Transition(seq=self.applied)


def interval(index):
    return controller_pb2.IntervalStats(interval_index=index)


def parse(data):
    return controller_pb2.RunEvent.FromString(data)


def test_a_watcher_that_never_reads_holds_a_bounded_queue_and_loses_only_intervals():
    state = Counter()
    hub = WatchHub(state.snapshot, queue_limit=8)
    stalled = hub.subscribe()
    for index in range(10_000):
        hub.publish(EventKind.INTERVAL, interval(index))
        if index % 1000 == 0:
            hub.update(state.transition)
    assert stalled._queued_intervals == 8
    assert len(stalled._queue) == 1 + 10 + 8  # snapshot, every transition, the last intervals
    hub.finish(state.snapshot())
    events = [parse(data) for data in stalled.events(timeout_s=1)]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "snapshot" and kinds[-1] == "finished"
    assert [e.transition.seq for e in events if kinds[events.index(e)] == "transition"] == \
        list(range(1, 11))
    kept = [e.interval.interval_index for e in events if e.WhichOneof("event") == "interval"]
    assert kept == list(range(9992, 10_000))
    # The count is cumulative and rides on every event read after the loss.
    assert {e.skipped for e in events} == {10_000 - 8}


def test_a_reading_watcher_gets_everything_while_another_is_stalled():
    state = Counter()
    hub = WatchHub(state.snapshot, queue_limit=4)
    stalled = hub.subscribe()
    reader = hub.subscribe()
    received = []

    def read():
        for data in reader.events(timeout_s=5):
            received.append(parse(data))
    thread = threading.Thread(target=read)
    thread.start()
    for index in range(2000):
        hub.publish(EventKind.INTERVAL, interval(index))
        # Give the reader a chance to keep up: it must never be skipped.
        while reader._queued_intervals >= 3:
            threading.Event().wait(0.0005)
    hub.finish(state.snapshot())
    thread.join(10)
    indices = [e.interval.interval_index for e in received if e.WhichOneof("event") == "interval"]
    assert indices == list(range(2000))
    assert all(e.skipped == 0 for e in received)
    assert stalled.skipped == 2000 - 4


def test_a_joining_watcher_sees_the_state_at_its_join_and_every_later_transition_once():
    state = Counter()
    hub = WatchHub(state.snapshot, queue_limit=10)
    stop = threading.Event()

    def publish():
        while not stop.is_set() and state.applied < 200_000:
            hub.update(state.transition)
    publisher = threading.Thread(target=publish)
    publisher.start()
    watchers = []
    for _ in range(20):
        watchers.append(hub.subscribe())
        threading.Event().wait(0.002)
    stop.set()
    publisher.join(30)
    hub.finish(state.snapshot())
    joins = set()
    for watcher in watchers:
        events = [parse(data) for data in watcher.events(timeout_s=1)]
        joined_at = events[0].snapshot.started_unix_ns
        joins.add(joined_at)
        seqs = [e.transition.seq for e in events if e.WhichOneof("event") == "transition"]
        assert seqs == list(range(joined_at + 1, state.applied + 1))
    assert len(joins) > 1, "every watcher joined at the same point: nothing was concurrent"


def test_a_watcher_joining_a_finished_run_gets_its_state_and_the_end():
    state = Counter()
    hub = WatchHub(state.snapshot)
    hub.update(state.transition)
    hub.finish(controller_pb2.RunInfo(run_id="run", finished=True, verdict="PASS"))
    events = [parse(data) for data in hub.subscribe().events(timeout_s=1)]
    assert [e.WhichOneof("event") for e in events] == ["snapshot", "finished"]
    assert events[1].finished.verdict == "PASS"
    assert hub.watcher_count() == 0


def test_closing_a_watcher_releases_a_blocked_reader():
    hub = WatchHub(Counter().snapshot)
    watcher = hub.subscribe()
    assert watcher.next(1) is not None
    result = []
    thread = threading.Thread(target=lambda: result.append(watcher.next()))
    thread.start()
    watcher.close()
    thread.join(5)
    assert result == [None] and not hub.watching
