/*
 * lg_pacer: sub-millisecond pacing for the load engine.  libuv timers are millisecond
 * grained, so the engine arms a timerfd with absolute CLOCK_MONOTONIC instants and lets the
 * event loop watch the descriptor like any socket.
 *
 * Every function here is safe to call without the GIL; none keeps state of its own.
 */
#ifndef LG_PACER_H
#define LG_PACER_H

#include <stdint.h>

/* CLOCK_MONOTONIC in nanoseconds; any caller. */
int64_t lg_pacer_now_ns(void);

/* A non-blocking, close-on-exec timerfd on CLOCK_MONOTONIC; returns the descriptor or -errno. */
int lg_pacer_open(void);

/* Arms fd to fire once at the absolute monotonic instant deadline_ns (an instant already
 * past fires at once); returns 0 or -errno.  Called by the engine's single loop thread. */
int lg_pacer_arm(int fd, int64_t deadline_ns);

/* Disarms fd; returns 0 or -errno. */
int lg_pacer_disarm(int fd);

/* Drains the expiry count so the descriptor stops polling readable; returns the count read
 * (0 if it had not fired). */
int64_t lg_pacer_consume(int fd);

/* Busy-waits until the monotonic clock reaches deadline_ns and returns the clock then.  Only
 * for the last few microseconds before a send, where a sleep would overshoot. */
int64_t lg_pacer_spin_until(int64_t deadline_ns);

/* Sleeps until the monotonic clock reaches deadline_ns (at once if it has) and returns the
 * clock then.  Blocks the calling thread: only for the engine's short in-slice waits, where a
 * return to the event loop would cost more than the wait. */
int64_t lg_pacer_sleep_until(int64_t deadline_ns);

/* Sets this thread's timer slack to 1 ns so the kernel does not batch our wake-ups by the
 * default 50 µs; returns 0 or -errno.  Called once by a worker before it starts pacing. */
int lg_pacer_tighten_timer_slack(void);

#endif
