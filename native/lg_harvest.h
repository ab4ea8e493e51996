/*
 * lg_harvest: reading responses without a wake-up of their own.  At high rates the engine
 * pauses uvloop's reading of plain-HTTP sockets and collects their responses when it wakes
 * for the next send anyway; the kernel's receive timestamp (SO_TIMESTAMPNS) tells when each
 * response really arrived, so collecting it later does not change its measured latency.
 *
 * Ready sockets are found through a private epoll instance that uvloop watches only while no
 * send is due soon.  Every function is safe without the GIL; none keeps state of its own.
 */
#ifndef LG_HARVEST_H
#define LG_HARVEST_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* A close-on-exec epoll instance for the sockets being harvested; the descriptor or -errno. */
int lg_harvest_open(void);

/* Adds fd (level-triggered, readable) to the instance and turns on receive timestamps;
 * 0 or -errno. */
int lg_harvest_watch(int epoll_fd, int fd);

/* Removes fd from the instance; 0 or -errno.  Call before the socket is closed. */
int lg_harvest_unwatch(int epoll_fd, int fd);

/* Fills ready_fds with up to max sockets that are readable now, without waiting; the number
 * filled or -errno. */
int lg_harvest_ready(int epoll_fd, int* ready_fds, int max);

/* Reads what fd holds without blocking.  Returns the byte count (0 at end of stream) or
 * -errno (-EAGAIN when nothing is there); *realtime_ns is the kernel's CLOCK_REALTIME receive
 * time of the last byte read, or 0 if the kernel gave none. */
ssize_t lg_harvest_recv(int fd, char* buffer, size_t length, int64_t* realtime_ns);

/* Writes what it can of buffer to fd without blocking or raising SIGPIPE.  Returns the byte
 * count (possibly short) or -errno.  Only for a harvested socket whose transport has nothing
 * queued, so bytes cannot overtake each other. */
ssize_t lg_harvest_send(int fd, const char* buffer, size_t length);

/* CLOCK_REALTIME minus CLOCK_MONOTONIC, in ns: converts receive timestamps to the pacing
 * clock. */
int64_t lg_harvest_realtime_offset_ns(void);

#endif
