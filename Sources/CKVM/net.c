// See include/CKVMNet.h.
#define _GNU_SOURCE // ppoll
#include "CKVMNet.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <linux/sockios.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>

// if_nametoindex without <net/if.h> (which clashes with <linux/if.h>).
extern unsigned int if_nametoindex(const char *ifname);

static int copy_name(char dest[IFNAMSIZ], const char *name) {
    size_t n = strlen(name);
    if (n >= IFNAMSIZ) return -ENAMETOOLONG;
    memset(dest, 0, IFNAMSIZ);
    memcpy(dest, name, n);
    return 0;
}

int ckvm_tap_attach(int fd, const char *name, char *out_name) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    int rc = copy_name(ifr.ifr_name, name);
    if (rc < 0) return rc;
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) return -errno;
    memcpy(out_name, ifr.ifr_name, IFNAMSIZ);
    out_name[IFNAMSIZ - 1] = 0;
    return 0;
}

static int with_socket(int (*body)(int, void *), void *context) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -errno;
    int rc = body(s, context);
    close(s);
    return rc;
}

static int link_up(int s, void *context) {
    struct ifreq *ifr = context;
    if (ioctl(s, SIOCGIFFLAGS, ifr) < 0) return -errno;
    ifr->ifr_flags |= IFF_UP;
    if (ioctl(s, SIOCSIFFLAGS, ifr) < 0) return -errno;
    return 0;
}

int ckvm_link_up(const char *name) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    int rc = copy_name(ifr.ifr_name, name);
    if (rc < 0) return rc;
    return with_socket(link_up, &ifr);
}

static int bridge_add(int s, void *context) {
    struct ifreq *ifr = context;
    if (ioctl(s, SIOCBRADDIF, ifr) < 0) return -errno;
    return 0;
}

int ckvm_bridge_add(const char *bridge, const char *name) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    int rc = copy_name(ifr.ifr_name, bridge);
    if (rc < 0) return rc;
    unsigned int index = if_nametoindex(name);
    if (index == 0) return -ENODEV;
    if (if_nametoindex(bridge) == 0) return -ENODEV;
    ifr.ifr_ifindex = (int)index;
    return with_socket(bridge_add, &ifr);
}

int ckvm_eventfd(void) {
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return fd < 0 ? -errno : fd;
}

int ckvm_epoll_create(void) {
    int fd = epoll_create1(EPOLL_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int ckvm_epoll_watch(int epfd, int fd, int watch, unsigned int tag) {
    struct epoll_event e = { .events = EPOLLIN, .data.u32 = tag };
    int r = epoll_ctl(epfd, watch ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, fd, &e);
    return r < 0 ? -errno : 0;
}

int ckvm_epoll_wait(int epfd, unsigned int *tags, unsigned int *events, int max, int timeout_ms) {
    struct epoll_event ready[8];
    if (max > 8) max = 8;
    int n = epoll_wait(epfd, ready, max, timeout_ms);
    if (n < 0) return -errno;
    for (int i = 0; i < n; i++) {
        tags[i] = ready[i].data.u32;
        events[i] = ((ready[i].events & EPOLLIN) ? 1u : 0u) | ((ready[i].events & (EPOLLERR | EPOLLHUP)) ? 2u : 0u);
    }
    return n;
}

int ckvm_poll_ns(void *fds, unsigned int count, long long nanoseconds) {
    if (nanoseconds < 0) nanoseconds = 0;
    struct timespec t = { .tv_sec = nanoseconds / 1000000000LL, .tv_nsec = nanoseconds % 1000000000LL };
    int n = ppoll((struct pollfd *)fds, count, &t, NULL);
    return n < 0 ? -errno : n;
}

int ckvm_socket_rx_timestamps(int fd) {
    int one = 1;
    return setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one) == 0 ? 0 : -errno;
}

long ckvm_recv_timestamped(int fd, void *buffer, unsigned long length, long long *realtime_ns) {
    union { char bytes[CMSG_SPACE(sizeof(struct timespec))]; struct cmsghdr align; } control;
    struct iovec iov = { .iov_base = buffer, .iov_len = length };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.bytes,
                          .msg_controllen = sizeof control.bytes };
    *realtime_ns = 0;
    ssize_t n = recvmsg(fd, &msg, MSG_DONTWAIT);
    if (n < 0) return -errno;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS && c->cmsg_len >= CMSG_LEN(sizeof(struct timespec))) {
            struct timespec t;
            memcpy(&t, CMSG_DATA(c), sizeof t);
            *realtime_ns = (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
        }
    }
    return n;
}
