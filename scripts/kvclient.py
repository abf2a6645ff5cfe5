#!/usr/bin/env python3
"""A small client of the built-in guest's UDP key-value store (docs/protocol.md §5.7).

SETs --keys keys (key<i> = a value derived from i and --seed), then GETs every one and
checks it returns exactly the acknowledged value. Each request waits up to --timeout
seconds for its answer (matched by key) and is retried up to --retries times.
Prints one summary line and exits 0 only when every SET was acknowledged and every GET
returned its value:

    kv: 100 set, 100 get, 0 wrong, 0 lost, rtt p50 412 us p99 1310 us

Usage: kvclient.py HOST [--port 7070] [--keys 100] [--seed 1] [--timeout 1] [--retries 3]
"""
import argparse
import socket
import sys
import time


def value_for(i, seed):
    return f"v{seed}-{i}-" + "x" * (i % 50)


def request(sock, address, message, key, args, rtts):
    for _ in range(args.retries + 1):
        start = time.monotonic()
        sock.sendto(message.encode(), address)
        deadline = start + args.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                data, _ = sock.recvfrom(2048)
            except socket.timeout:
                break
            words = data.decode(errors="replace").split(" ", 2)
            if len(words) >= 2 and words[1] == key:
                rtts.append(time.monotonic() - start)
                return words
    return None


def percentile(values, p):
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("--port", type=int, default=7070)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--retries", type=int, default=3)
    args = parser.parse_args()
    address = (args.host, args.port)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtts = []
    lost = wrong = 0
    for i in range(args.keys):
        key = f"key{i}"
        answer = request(sock, address, f"SET {key} {value_for(i, args.seed)}", key, args, rtts)
        if answer is None:
            lost += 1
        elif answer[0] != "OK":
            wrong += 1
            print(f"kv: SET {key} answered {' '.join(answer)}", file=sys.stderr)
    for i in range(args.keys):
        key = f"key{i}"
        answer = request(sock, address, f"GET {key}", key, args, rtts)
        if answer is None:
            lost += 1
        elif answer[0] != "VALUE" or len(answer) < 3 or answer[2] != value_for(i, args.seed):
            wrong += 1
            print(f"kv: GET {key} answered {' '.join(answer)}", file=sys.stderr)
    us = lambda s: int(s * 1e6)
    print(f"kv: {args.keys} set, {args.keys} get, {wrong} wrong, {lost} lost, "
          f"rtt p50 {us(percentile(rtts, 50))} us p99 {us(percentile(rtts, 99))} us")
    return 0 if wrong == 0 and lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
