// The kernel's share of the PV NIC round trip: a userspace responder on a TAP, no KVM.
// Answers ARP for 192.0.2.2 and ICMP echo to it, one blocking read() per frame, on one thread
// (built with -DSPIN: non-blocking reads in a loop that never sleeps).
// Usage (inside the hosts namespace): tapecho TAPNAME   (creates the TAP; the caller bridges it).
// Built and run by scripts/nic-floor/floor.sh; see docs/benchmarks.md.
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

static const uint8_t mac[6] = {0x52, 0x54, 0x00, 0x12, 0x34, 0x77}; // locally administered
static const uint8_t ip[4] = {192, 0, 2, 2};

static uint16_t csum(const uint8_t *p, int n) {
    uint32_t s = 0;
    for (int i = 0; i + 1 < n; i += 2) s += (p[i] << 8) | p[i + 1];
    if (n & 1) s += p[n - 1] << 8;
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    return (uint16_t)~s;
}

int main(int argc, char **argv) {
    int fd = open("/dev/net/tun", O_RDWR);
    struct ifreq ifr = {0};
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    strncpy(ifr.ifr_name, argc > 1 ? argv[1] : "pvmt-rxwt", IFNAMSIZ - 1);
    if (fd < 0 || ioctl(fd, TUNSETIFF, &ifr) < 0) { perror("tap"); return 1; }
#ifdef SPIN
    fcntl(fd, F_SETFL, O_NONBLOCK); // read() returns at once: the loop spins instead of sleeping
#endif
    printf("ready %s\n", ifr.ifr_name);
    fflush(stdout);
    uint8_t f[2048];
    for (;;) {
        ssize_t n = read(fd, f, sizeof f);
        if (n < 42) continue;
        uint16_t type = (f[12] << 8) | f[13];
        if (type == 0x0806 && f[21] == 1 && !memcmp(f + 38, ip, 4)) { // ARP request for us
            memcpy(f, f + 6, 6); memcpy(f + 6, mac, 6);
            f[21] = 2;
            memcpy(f + 32, f + 22, 10);          // target = sender
            memcpy(f + 22, mac, 6); memcpy(f + 28, ip, 4);
            write(fd, f, n);
        } else if (type == 0x0800 && f[23] == 1 && !memcmp(f + 30, ip, 4)) { // ICMP to us
            int ihl = (f[14] & 15) * 4;
            uint8_t *icmp = f + 14 + ihl;
            if (icmp[0] != 8) continue;
            uint8_t t[6]; memcpy(t, f, 6); memcpy(f, f + 6, 6); memcpy(f + 6, t, 6);
            uint8_t a[4]; memcpy(a, f + 26, 4); memcpy(f + 26, f + 30, 4); memcpy(f + 30, a, 4);
            icmp[0] = 0; icmp[2] = icmp[3] = 0;
            uint16_t c = csum(icmp, n - 14 - ihl); icmp[2] = c >> 8; icmp[3] = c & 0xff;
            write(fd, f, n);
        }
    }
}
