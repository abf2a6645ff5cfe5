// CKVM networking helpers: the TAP and bridge ioctls, whose request macros (_IOW) and
// `struct ifreq` unions Swift cannot use directly, and setns(2). Used by the Net and NetBench targets.
// Every function returns a non-negative value on success or -errno on failure.
#ifndef CKVM_NET_H
#define CKVM_NET_H

/// Makes the open /dev/net/tun descriptor `fd` a TAP without packet information
/// (IFF_TAP | IFF_NO_PI, TUNSETIFF). `name` (at most 15 bytes) names an existing TAP to
/// attach to or the new one; empty lets the kernel pick. The final name is written to
/// `out_name` (16 bytes, NUL-terminated). Returns 0 or -errno.
int ckvm_tap_attach(int fd, const char *name, char *out_name);

/// Sets interface `name` up (SIOCGIFFLAGS / SIOCSIFFLAGS | IFF_UP). Returns 0 or -errno.
int ckvm_link_up(const char *name);

/// Adds interface `name` to bridge `bridge` (SIOCBRADDIF). Returns 0 or -errno
/// (-ENODEV: no such bridge or interface; -EOPNOTSUPP/-EINVAL: `bridge` is not a bridge).
int ckvm_bridge_add(const char *bridge, const char *name);

/// eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK). Returns the descriptor or -errno.
int ckvm_eventfd(void);

/// epoll_create1(EPOLL_CLOEXEC). Returns the descriptor or -errno. (struct epoll_event is
/// packed on x86-64: these three keep it out of Swift.)
int ckvm_epoll_create(void);

/// Adds (`watch` != 0; EPOLLIN, level-triggered, `tag` in the event's data) or removes
/// (`watch` == 0) `fd` in the epoll set `epfd`. Another thread may do this while one waits
/// in ckvm_epoll_wait. Returns 0 or -errno.
int ckvm_epoll_watch(int epfd, int fd, int watch, unsigned int tag);

/// epoll_wait for at most `max` (≤ 8) events: their tags go to `tags`, and to `events` 1 if
/// readable, | 2 on an error or hang-up. Returns how many, or -errno (-EINTR included).
int ckvm_epoll_wait(int epfd, unsigned int *tags, unsigned int *events, int max, int timeout_ms);

/// ppoll(2) on the `count` `struct pollfd` at `fds` for at most `nanoseconds` (poll's timeout
/// is whole milliseconds). Returns how many are ready, 0 when the time ran out, or -errno
/// (-EINTR included).
int ckvm_poll_ns(void *fds, unsigned int count, long long nanoseconds);

/// Asks the kernel to stamp each datagram received on socket `fd` with the time it arrived
/// (SO_TIMESTAMPNS, CLOCK_REALTIME, taken in the receive softirq: what iputils ping reports
/// its round trips from). Returns 0 or -errno.
int ckvm_socket_rx_timestamps(int fd);

/// recvmsg(2) of one datagram (MSG_DONTWAIT) into `buffer` (`length` bytes). `realtime_ns`
/// receives its SO_TIMESTAMPNS stamp in CLOCK_REALTIME nanoseconds, or 0 when it carried none.
/// Returns the datagram's length or -errno (-EAGAIN: nothing waits).
long ckvm_recv_timestamped(int fd, void *buffer, unsigned long length, long long *realtime_ns);

/// Moves the calling thread (only it) into the network namespace at `path`, e.g.
/// /run/netns/NAME (`ip netns add`), with setns(2): sockets it creates afterwards belong to
/// that namespace for their whole life, whichever thread uses them. Used by the NetBench
/// target's clients. Returns 0 or -errno.
int ckvm_enter_netns(const char *path);

#endif
