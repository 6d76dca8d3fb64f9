#!/usr/bin/env python3
"""A stand-in for `backstop spf-worker` that breaks the protocol on purpose, for Backstop's
tests: the server must stay up, answer temperror within the deadline and replace it.

    fake_spf_worker.py MODE spf-worker --user U --parent P     (descriptor 0 is the socket)

MODE is one of:
    pass          a well-behaved worker that answers every evaluation "pass"
    huge-counts   answers with 255 lookups and 65535 queries
    bad-result    answers with result code 9
    oversized     sends a frame that claims 16 MB
    twice         answers each evaluation twice
    never         reads and never answers
    garbage       answers with random octets
    need-flood    asks for 200 different names, without waiting for answers
    need-again    asks for the same answer again after it was given
    unknown-id    answers an evaluation that was never sent
    notice-flood  writes notices for the server's log instead of answering
    exit          exits at once with status 3
    deaf          reads the hello, then nothing more
"""
import os
import struct
import sys
import time


def read_exactly(n):
    data = b""
    while len(data) < n:
        chunk = os.read(0, n - len(data))
        if not chunk:
            sys.exit(0)
        data += chunk
    return data


def read_frame():
    (length,) = struct.unpack("!I", read_exactly(4))
    return read_exactly(length)


def send(body):
    os.write(0, struct.pack("!I", len(body)) + body)


def done(eid, result=0, lookups=0, voids=0, queries=1, mechanism=b"all"):
    send(bytes([0x82]) + struct.pack("!IBBBH", eid, result, lookups, voids, queries)
         + struct.pack("!H", len(mechanism)) + mechanism + b"\0\0" + b"\0\0")


def need(eid, name, qtype=1):
    wire = b"".join(bytes([len(p)]) + p for p in name.split(b".")) + b"\0"
    send(bytes([0x81]) + struct.pack("!I", eid) + bytes([len(wire)]) + wire + struct.pack("!H", qtype))


def main():
    mode = sys.argv[1]
    if mode == "exit":
        sys.exit(3)
    read_frame()  # hello
    if mode == "deaf":
        while True:
            time.sleep(1)
    while True:
        body = read_frame()
        kind = body[0]
        if kind != 2 and not (kind == 3 and mode == "need-again"):
            continue
        (eid,) = struct.unpack("!I", body[1:5])
        if mode == "pass":
            done(eid)
        elif mode == "huge-counts":
            done(eid, lookups=255, queries=65535)
        elif mode == "bad-result":
            done(eid, result=9)
        elif mode == "oversized":
            os.write(0, struct.pack("!I", 16 << 20) + b"\x82" * 4096)
        elif mode == "twice":
            done(eid)
            done(eid)
        elif mode == "never":
            pass
        elif mode == "garbage":
            os.write(0, os.urandom(64))
        elif mode == "need-flood":
            for n in range(200):
                need(eid, b"n%d.flood.example" % n)
        elif mode == "need-again":
            need(eid, b"again.example")
        elif mode == "unknown-id":
            done(eid + 1000)
        elif mode == "notice-flood":
            for n in range(20):
                text = b"forged log line %d" % n
                send(bytes([0x83]) + struct.pack("!H", len(text)) + text)
        time.sleep(0)


if __name__ == "__main__":
    main()
