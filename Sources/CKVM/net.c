// See include/CKVMNet.h.
#include "CKVMNet.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <linux/sockios.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
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
