#!/usr/bin/env python3
"""Watches every interface of the current network namespace for gratuitous ARPs from one
guest (docs/protocol.md §5.7, §5.8): an ARP whose sender MAC is MAC and whose sender and
target addresses are both IP. Prints one line per frame seen, with the interface it was seen
on (a bridge and its port both see it), until killed:

    garp-watch: gratuitous ARP from 52:54:00:12:34:56 for 192.0.2.2 on tap1

Needs root (AF_PACKET). Usage: garp_watch.py MAC IP
"""
import socket
import sys

ETH_P_ALL = 0x0003  # every frame: a protocol-bound socket would not see a bridge port's frames


def main():
    mac = bytes.fromhex(sys.argv[1].replace(":", ""))
    ip = socket.inet_aton(sys.argv[2])
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    print("garp-watch: listening", flush=True)
    while True:
        frame, address = s.recvfrom(2048)
        # Ethernet (14) + ARP: htype, ptype, hlen, plen, op, sha[6], spa[4], tha[6], tpa[4].
        if len(frame) < 42 or frame[12:14] != b"\x08\x06":
            continue
        sha, spa, tpa = frame[22:28], frame[28:32], frame[38:42]
        if sha == mac and spa == ip and tpa == ip:
            print(f"garp-watch: gratuitous ARP from {sys.argv[1]} for {sys.argv[2]} on {address[0]}", flush=True)


if __name__ == "__main__":
    main()
