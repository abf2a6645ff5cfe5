#!/usr/bin/env python3
"""Keeps writing to the built-in guest's UDP key-value store (docs/protocol.md §5.7) while
something happens to the guest (a migration), then reads every acknowledged write back.

Phase 1: SET k<i> v<i>-… for i = 0, 1, 2, … one at a time; a SET is resent every --resend
seconds until its OK arrives (a SET is idempotent), for at most --give-up seconds. Prints
"kv-during: writing" after the first acknowledgement. Stops when the file STOP exists.
Phase 2: GET every acknowledged key (with the same resending) and compares.
Prints one summary line and exits 0 only when every SET was acknowledged in time and every
GET returned exactly the acknowledged value:

    kv-during: 812 SETs acknowledged (500 keys), 500 read back, 0 wrong, 0 unanswered, longest wait 41 ms

Usage: kv_during.py HOST STOP [--port 7070] [--resend 0.02] [--give-up 30]
"""
import argparse
import os
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
import kvclient  # noqa: E402  (the same request/answer matching as the plain client)


def exchange(sock, address, message, key, args):
    """Sends `message` until an answer naming `key` arrives (scripts/kvclient.py's request,
    resending every --resend seconds for --give-up seconds); returns its words and the wait."""
    start = time.monotonic()
    tries = argparse.Namespace(timeout=args.resend, retries=max(0, int(args.give_up / args.resend) - 1))
    words = kvclient.request(sock, address, message, key, tries, [])
    return words, time.monotonic() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("host")
    ap.add_argument("stop")
    ap.add_argument("--port", type=int, default=7070)
    ap.add_argument("--resend", type=float, default=0.02)
    ap.add_argument("--give-up", type=float, default=30.0)
    args = ap.parse_args()
    address = (args.host, args.port)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    acknowledged, longest, unanswered, sets = {}, 0.0, 0, 0
    i = 0
    while not os.path.exists(args.stop):
        key, value = f"k{i}", f"v{i}-" + "x" * (i % 40)
        words, waited = exchange(sock, address, f"SET {key} {value}", key, args)
        longest = max(longest, waited)
        if words is None or words[0] != "OK":
            unanswered += 1
            print(f"kv-during: SET {key} got {words} after {waited:.1f} s", flush=True)
            break
        acknowledged[key] = value
        sets += 1
        if len(acknowledged) == 1:
            print("kv-during: writing", flush=True)
        i += 1
        if i >= 500:  # the store holds 512 keys; overwrite the same ones from here on
            i = 0
    read, wrong = 0, 0
    for key, value in acknowledged.items():
        words, waited = exchange(sock, address, f"GET {key}", key, args)
        if words is None:
            unanswered += 1
        elif words[0] == "VALUE" and len(words) == 3 and words[2] == value:
            read += 1
        else:
            wrong += 1
            print(f"kv-during: GET {key}: expected {value!r}, got {words}", flush=True)
    print(f"kv-during: {sets} SETs acknowledged ({len(acknowledged)} keys), {read} read back, {wrong} wrong, {unanswered} unanswered, "
          f"longest wait {longest * 1000:.0f} ms", flush=True)
    sys.exit(0 if acknowledged and read == len(acknowledged) and wrong == 0 and unanswered == 0 else 1)


if __name__ == "__main__":
    main()
