// CKVM networking helpers: the TAP and bridge ioctls, whose request macros (_IOW) and
// `struct ifreq` unions Swift cannot use directly. Used by the Net target only.
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

#endif
