#include "lg_harvest.h"

#include <errno.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define LG_NS_PER_S 1000000000LL
#define LG_HARVEST_BATCH 256

int lg_harvest_open(void)
{
    int fd = epoll_create1(EPOLL_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int lg_harvest_watch(int epoll_fd, int fd)
{
    int on = 1;
    struct epoll_event event;
    memset(&event, 0, sizeof(event));
    event.events = EPOLLIN | EPOLLRDHUP;
    event.data.fd = fd;
    if (setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof(on)) < 0)
    {
        return -errno;
    }
    return epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &event) < 0 ? -errno : 0;
}

int lg_harvest_unwatch(int epoll_fd, int fd)
{
    return epoll_ctl(epoll_fd, EPOLL_CTL_DEL, fd, NULL) < 0 ? -errno : 0;
}

int lg_harvest_ready(int epoll_fd, int* ready_fds, int max)
{
    struct epoll_event events[LG_HARVEST_BATCH];
    int count;
    if (max > LG_HARVEST_BATCH)
    {
        max = LG_HARVEST_BATCH;
    }
    count = epoll_wait(epoll_fd, events, max, 0);
    if (count < 0)
    {
        return errno == EINTR ? 0 : -errno;
    }
    for (int i = 0; i < count; i++)
    {
        ready_fds[i] = events[i].data.fd;
    }
    return count;
}

ssize_t lg_harvest_recv(int fd, char* buffer, size_t length, int64_t* realtime_ns)
{
    char control[CMSG_SPACE(sizeof(struct timespec))];
    struct iovec vector = {buffer, length};
    struct msghdr message;
    struct cmsghdr* header;
    ssize_t received;

    memset(&message, 0, sizeof(message));
    message.msg_iov = &vector;
    message.msg_iovlen = 1;
    message.msg_control = control;
    message.msg_controllen = sizeof(control);
    *realtime_ns = 0;
    received = recvmsg(fd, &message, MSG_DONTWAIT);
    if (received < 0)
    {
        return -errno;
    }
    for (header = CMSG_FIRSTHDR(&message); header != NULL; header = CMSG_NXTHDR(&message, header))
    {
        if (header->cmsg_level == SOL_SOCKET && header->cmsg_type == SCM_TIMESTAMPNS)
        {
            struct timespec stamp;
            memcpy(&stamp, CMSG_DATA(header), sizeof(stamp));
            *realtime_ns = (int64_t) stamp.tv_sec * LG_NS_PER_S + stamp.tv_nsec;
        }
    }
    return received;
}

ssize_t lg_harvest_send(int fd, const char* buffer, size_t length)
{
    ssize_t sent = send(fd, buffer, length, MSG_DONTWAIT | MSG_NOSIGNAL);
    return sent < 0 ? -errno : sent;
}

int64_t lg_harvest_realtime_offset_ns(void)
{
    struct timespec realtime, monotonic;
    clock_gettime(CLOCK_REALTIME, &realtime);
    clock_gettime(CLOCK_MONOTONIC, &monotonic);
    return ((int64_t) realtime.tv_sec - monotonic.tv_sec) * LG_NS_PER_S
           + (realtime.tv_nsec - monotonic.tv_nsec);
}
