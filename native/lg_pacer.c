#include "lg_pacer.h"

#include <errno.h>
#include <sys/prctl.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define LG_NS_PER_S 1000000000LL

int64_t lg_pacer_now_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t) now.tv_sec * LG_NS_PER_S + now.tv_nsec;
}

int lg_pacer_open(void)
{
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int lg_pacer_arm(int fd, int64_t deadline_ns)
{
    struct itimerspec spec = {0};
    /* A zero it_value would disarm the timer, so an instant at or before the epoch of the
     * clock is moved to 1 ns, which is in the past and fires at once. */
    if (deadline_ns <= 0)
    {
        deadline_ns = 1;
    }
    spec.it_value.tv_sec = deadline_ns / LG_NS_PER_S;
    spec.it_value.tv_nsec = deadline_ns % LG_NS_PER_S;
    return timerfd_settime(fd, TFD_TIMER_ABSTIME, &spec, NULL) < 0 ? -errno : 0;
}

int lg_pacer_disarm(int fd)
{
    struct itimerspec spec = {0};
    return timerfd_settime(fd, 0, &spec, NULL) < 0 ? -errno : 0;
}

int64_t lg_pacer_consume(int fd)
{
    uint64_t expirations = 0;
    if (read(fd, &expirations, sizeof(expirations)) != (ssize_t) sizeof(expirations))
    {
        return 0;
    }
    return (int64_t) expirations;
}

int64_t lg_pacer_spin_until(int64_t deadline_ns)
{
    int64_t now = lg_pacer_now_ns();
    while (now < deadline_ns)
    {
        now = lg_pacer_now_ns();
    }
    return now;
}

int64_t lg_pacer_sleep_until(int64_t deadline_ns)
{
    struct timespec until;
    if (deadline_ns > 0)
    {
        until.tv_sec = deadline_ns / LG_NS_PER_S;
        until.tv_nsec = deadline_ns % LG_NS_PER_S;
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) == EINTR)
        {
        }
    }
    return lg_pacer_now_ns();
}

int lg_pacer_tighten_timer_slack(void)
{
    return prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL) < 0 ? -errno : 0;
}
