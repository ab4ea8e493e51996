"""Intended send instants for the inference clients, taken from a schedule's cursor.

Open loop: each arrival's instant is fixed by the schedule before the run starts, and every
latency is measured from it, so a slow target shows up as latency instead of silently
lowering the offered rate.  Event-loop timers are coarse (uvloop's tick is a millisecond),
so a wait sleeps on the timer until shortly before the instant and yields to the loop for
the rest: the poll costs a little CPU and keeps the median schedule lag at microseconds.
"""
import asyncio
import time

# Sleep on the timer until this close to an instant, then yield until it arrives.  uvloop's
# timer fires up to ~0.9 ms early (then the poll covers it) and usually < 0.5 ms late; at
# 200 arrivals/s the poll costs ~5 % of a core here, 1.5 ms would cost ~15 %.
SPIN_NS = 500_000
BLOCKING_SPIN_NS = 200_000
BATCH = 512
# Time between starting the clock and the first instant: sockets and tasks get set up.
LEAD_NS = 20_000_000


def instants(schedule):
    """Every intended instant of the schedule, as int ns offsets, batch by batch."""
    cursor = schedule.cursor()
    while True:
        batch = cursor.next_batch(BATCH)
        if not len(batch):
            return
        yield from batch.tolist()


async def wait_until(target_ns, spin_ns=SPIN_NS):
    """Returns at ``time.monotonic_ns() >= target_ns`` (at once if it has passed); polls the
    loop for the last ``spin_ns``.  With 0 it trusts the timer, which may fire up to a tick
    late (lag) or early (then it polls, since sending early would be wrong too)."""
    remaining = target_ns - time.monotonic_ns()
    if remaining > spin_ns:
        await asyncio.sleep((remaining - spin_ns) / 1e9)
    while time.monotonic_ns() < target_ns:
        await asyncio.sleep(0)


def sleep_until(target_ns):
    """The blocking form of ``wait_until`` for in-process targets that own their thread;
    ``time.sleep`` is finer than the loop's timer, so its spin is shorter."""
    remaining = target_ns - time.monotonic_ns()
    if remaining > BLOCKING_SPIN_NS:
        time.sleep((remaining - BLOCKING_SPIN_NS) / 1e9)
    while time.monotonic_ns() < target_ns:
        pass
