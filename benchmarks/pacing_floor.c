/*
 * pacing_floor: the least work an open-loop HTTP/1.1 client can do at a fixed rate, as the
 * floor that bench_generator.py puts beside loadgate and wrk2.  One thread, keep-alive
 * connections opened up front, a constant-rate schedule, clock_nanosleep to each send (or to
 * the end of a pacing window), responses read without a wake-up of their own when the next
 * send wakes the thread anyway.  No parser beyond framing by Content-Length, no histogram,
 * no timeouts: whatever a real generator costs above this is its own overhead, and what
 * this costs is the machine's price for pacing (wake-ups, loopback sends).
 *
 * Usage: pacing_floor PORT RATE SECONDS CONNECTIONS WINDOW_NS
 * Prints one JSON line: requests sent, responses completed, late sends and the schedule lag
 * (send - intended) p50/p99/max in microseconds.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define FLOOR_MAX_CONNECTIONS 1024
#define FLOOR_BUFFER 65536

struct floor_connection
{
    int fd;
    int busy;
    size_t have;
    char buffer[FLOOR_BUFFER];
};

static struct floor_connection floor_connections[FLOOR_MAX_CONNECTIONS];
static int floor_idle[FLOOR_MAX_CONNECTIONS];
static int floor_idle_count;

/* CLOCK_MONOTONIC in ns. */
static int64_t floor_now_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t) now.tv_sec * 1000000000LL + now.tv_nsec;
}

/* Sleeps until the absolute monotonic instant deadline_ns (returns at once if it is past). */
static void floor_sleep_until(int64_t deadline_ns)
{
    struct timespec until = {deadline_ns / 1000000000LL, deadline_ns % 1000000000LL};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) == EINTR)
    {
    }
}

/* A connected, non-blocking TCP socket to 127.0.0.1:port, or -1. */
static int floor_connect(int port)
{
    struct sockaddr_in address;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int on = 1;
    memset(&address, 0, sizeof(address));
    address.sin_family = AF_INET;
    address.sin_port = htons((uint16_t) port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr*) &address, sizeof(address)) < 0)
    {
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
    return fd;
}

/* Returns the length of the first complete response in buffer, or 0 if it is not complete. */
static size_t floor_response_length(const char* buffer, size_t have)
{
    const char* end = memmem(buffer, have, "\r\n\r\n", 4);
    const char* length;
    size_t header;
    if (end == NULL)
    {
        return 0;
    }
    header = (size_t) (end - buffer) + 4;
    length = memmem(buffer, header, "Content-Length:", 15);
    if (length == NULL)
    {
        length = memmem(buffer, header, "content-length:", 15);
    }
    if (length == NULL)
    {
        return header;
    }
    header += strtoul(length + 15, NULL, 10);
    return header <= have ? header : 0;
}

/* Reads every connection that has bytes waiting; returns the responses it completed. */
static long floor_harvest(int epoll_fd)
{
    struct epoll_event events[256];
    long completed = 0;
    int count = epoll_wait(epoll_fd, events, 256, 0);
    for (int i = 0; i < count; i++)
    {
        int index = events[i].data.u32;
        struct floor_connection* conn = &floor_connections[index];
        ssize_t got = recv(conn->fd, conn->buffer + conn->have, FLOOR_BUFFER - conn->have,
                           MSG_DONTWAIT);
        size_t length;
        if (got <= 0)
        {
            continue;
        }
        conn->have += (size_t) got;
        length = floor_response_length(conn->buffer, conn->have);
        if (length > 0 && conn->busy)
        {
            memmove(conn->buffer, conn->buffer + length, conn->have - length);
            conn->have -= length;
            conn->busy = 0;
            floor_idle[floor_idle_count++] = index;
            completed++;
        }
    }
    return completed;
}

static int floor_compare(const void* left, const void* right)
{
    int64_t a = *(const int64_t*) left, b = *(const int64_t*) right;
    return (a > b) - (a < b);
}

int main(int argc, char** argv)
{
    static const char request[] = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    int port, connections, epoll_fd;
    double rate, seconds;
    int64_t gap_ns, window_ns, start_ns, total;
    int64_t* lag;
    long completed = 0, late = 0, sent = 0;

    if (argc != 6)
    {
        fprintf(stderr, "usage: %s PORT RATE SECONDS CONNECTIONS WINDOW_NS\n", argv[0]);
        return 2;
    }
    port = atoi(argv[1]);
    rate = atof(argv[2]);
    seconds = atof(argv[3]);
    connections = atoi(argv[4]);
    window_ns = atoll(argv[5]);
    if (rate <= 0 || seconds <= 0 || connections < 1 || connections > FLOOR_MAX_CONNECTIONS)
    {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    gap_ns = (int64_t) (1e9 / rate);
    total = (int64_t) (rate * seconds);
    lag = calloc((size_t) total, sizeof(int64_t));
    epoll_fd = epoll_create1(0);
    /* The default 50 us timer slack would be most of the lag measured. */
    prctl(PR_SET_TIMERSLACK, 1UL);
    for (int i = 0; i < connections; i++)
    {
        struct epoll_event event = {.events = EPOLLIN, .data.u32 = (uint32_t) i};
        floor_connections[i].fd = floor_connect(port);
        if (floor_connections[i].fd < 0 || lag == NULL)
        {
            perror("connect");
            return 1;
        }
        epoll_ctl(epoll_fd, EPOLL_CTL_ADD, floor_connections[i].fd, &event);
        floor_idle[floor_idle_count++] = i;
    }

    start_ns = floor_now_ns() + 10000000;
    while (sent < total)
    {
        int64_t now;
        floor_sleep_until(start_ns + sent * gap_ns + window_ns);
        completed += floor_harvest(epoll_fd);
        now = floor_now_ns();
        while (sent < total && start_ns + sent * gap_ns <= now)
        {
            struct floor_connection* conn;
            if (floor_idle_count == 0)
            {
                late++;
            }
            while (floor_idle_count == 0)
            {
                completed += floor_harvest(epoll_fd);
            }
            conn = &floor_connections[floor_idle[--floor_idle_count]];
            conn->busy = 1;
            now = floor_now_ns();
            if (send(conn->fd, request, sizeof(request) - 1, MSG_NOSIGNAL) < 0)
            {
                perror("send");
                return 1;
            }
            lag[sent] = now - (start_ns + sent * gap_ns);
            sent++;
        }
    }
    while (completed < sent && floor_now_ns() < start_ns + (int64_t) (seconds * 1e9) + 2000000000LL)
    {
        floor_sleep_until(floor_now_ns() + 1000000);
        completed += floor_harvest(epoll_fd);
    }
    qsort(lag, (size_t) sent, sizeof(int64_t), floor_compare);
    printf("{\"requests\": %ld, \"completed\": %ld, \"late\": %ld, "
           "\"lag_us\": {\"p50\": %lld, \"p99\": %lld, \"max\": %lld}}\n",
           sent, completed, late, (long long) (lag[sent / 2] / 1000),
           (long long) (lag[sent * 99 / 100] / 1000), (long long) (lag[sent - 1] / 1000));
    return 0;
}
