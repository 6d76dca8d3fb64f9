#!/usr/bin/env python3
"""A tiny authoritative DNS server on loopback for Backstop's SPF tests and benchmarks.

It serves zone data written like the `zonedata` of the RFC 7208 test suite
(rfc7208-tests.yml) over UDP and TCP on one loopback port, prints that port on stdout
when it is ready (so callers can ask for port 0), and stops when stdin closes, so a
test that dies never leaves it behind. It is deliberately not a resolver: it knows only
the zone it was given, answers NXDOMAIN for everything else, and never recurses.

Zone data (JSON, or YAML when PyYAML is installed): a mapping of names to lists of
records, each record one of
    {"TXT": "v=spf1 -all"}            a TXT record (a string, or a list of strings
    {"TXT": ["part one", "part two"]}  for several character-strings in one record)
    {"SPF": "v=spf1 -all"}            type 99; also served as TXT when the name has no TXT
    {"A": "192.0.2.1"} {"AAAA": "2001:db8::1"} {"MX": [10, "mx.example.com"]}
    {"PTR": "host.example.com"} {"CNAME": "target.example.com"}
    "TIMEOUT"                         queries for this name are never answered
    {"TXT": "TIMEOUT"}                queries of this type for this name are never answered
As in the suite's reference driver, an unknown name starting with "error." times out.
A name "*.zone.example" is a wildcard (RFC 4592, simplified): a name below zone.example
that has no records of its own is answered from the nearest such wildcard above it, so a
benchmark can ask for millions of distinct domains without listing them.

Usage:
    dns_server.py --zone zone.json [--port 0] [--delay-ms 0] [--ttl 300]
    dns_server.py --suite suite.json   # then "scenario N" on stdin switches zone data
    dns_server.py --convert suite.yml > suite.json   # YAML test suite to JSON (needs PyYAML)

Commands on stdin (one per line, each answered with one line on stdout):
    scenario N   serve the zonedata of scenario N of --suite        -> "ok"
    zone FILE    serve the zone in FILE                              -> "ok"
    delay MS     answer every query after MS milliseconds            -> "ok"
    count        how many queries arrived since the last reset       -> "<number>"
    loops MODE   an alias loop is answered "partial" (the chain as far
                 as it goes, the default) or "servfail"               -> "ok"
    reset        set the query count to zero                         -> "ok"
Needs dnslib (pip install dnslib).
"""

import argparse
import json
import socket
import struct
import sys
import threading
import time

from dnslib import AAAA, CNAME, MX, PTR, QTYPE, RCODE, RR, TXT, A, DNSLabel, DNSRecord

TYPES = {"A": QTYPE.A, "AAAA": QTYPE.AAAA, "MX": QTYPE.MX, "PTR": QTYPE.PTR, "CNAME": QTYPE.CNAME,
         "TXT": QTYPE.TXT, "SPF": 99}


def load_file(path):
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith((".yml", ".yaml")):
        import yaml  # only needed for YAML input
        return list(yaml.safe_load_all(data))
    return json.loads(data.decode("utf-8"))


def normalise(name):
    return ".".join(label for label in name.rstrip(".").split(".") if label).lower()


def compile_zone(zonedata):
    """name -> list of (type, value) or "TIMEOUT"; SPF records copied to TXT as the
    reference driver does when a name has no TXT of its own."""
    zone = {}
    for name, records in (zonedata or {}).items():
        out = []
        generated = []
        has_txt = False
        for record in records or []:
            if isinstance(record, str):
                out.append(record)
                continue
            for rtype, value in record.items():
                if rtype in ("TXT", "SPF") and isinstance(value, str) and value != "TIMEOUT":
                    value = [value]
                if rtype == "TXT":
                    has_txt = True
                elif rtype == "SPF":
                    generated.append(("TXT", value))
                if value != ["NONE"]:
                    out.append((rtype, value))
        if not has_txt:
            out.extend(generated)
        zone[normalise(name)] = out
    return zone


def txt_strings(parts):
    strings = []
    for part in parts:
        raw = part.encode("utf-8") if isinstance(part, str) else bytes(part)
        if not raw:
            strings.append(b"")
        while raw:
            strings.append(raw[:255])
            raw = raw[255:]
    return strings


def rdata(rtype, value):
    if rtype == "A":
        return A(value)
    if rtype == "AAAA":
        return AAAA(value)
    if rtype == "MX":
        pref, host = (value if isinstance(value, list) else (10, value))
        return MX(host, pref)
    if rtype == "PTR":
        return PTR(value)
    if rtype == "CNAME":
        return CNAME(value)
    if rtype in ("TXT", "SPF"):
        return TXT(txt_strings(value))
    raise ValueError("unknown record type " + rtype)


class Zone:
    def __init__(self):
        self.lock = threading.Lock()
        self.zone = {}
        self.delay = 0.0
        self.ttl = 300
        self.count = 0
        self.loops = "partial"

    @property
    def wildcards(self):
        """True when the zone has a "*." name (looked up lazily, cached per zone)."""
        if getattr(self, "_wildcards_of", None) is not self.zone:
            self._wildcards_of = self.zone
            self._wildcards = any(name.startswith("*.") for name in self.zone)
        return self._wildcards

    def lookup(self, name, qtype, depth=0, seen=None):
        """Returns (rcode, [(owner, rtype, value)]) or None for "never answer"."""
        key = normalise(name)
        seen = set() if seen is None else seen
        if key in seen and self.loops == "servfail":
            return RCODE.SERVFAIL, []
        seen.add(key)
        with self.lock:
            records = self.zone.get(key)
            if records is None and self.wildcards:
                parent = key
                while records is None and "." in parent:
                    parent = parent.split(".", 1)[1]
                    records = self.zone.get("*." + parent)
        if records is None:
            if key.startswith("error."):
                return None
            return RCODE.NXDOMAIN, []
        answers = []
        seen_type = False
        for record in records:
            if record == "TIMEOUT":
                if not seen_type:
                    return None
                break
            rtype, value = record
            if TYPES.get(rtype) == qtype:
                seen_type = True
                if value == "TIMEOUT":
                    return None
            if value == "TIMEOUT":
                continue
            if TYPES.get(rtype) == qtype or (rtype == "CNAME" and qtype != QTYPE.CNAME):
                answers.append((key, rtype, value))
                if rtype == "CNAME" and depth < 8:
                    chased = self.lookup(value, qtype, depth + 1, seen)
                    if chased is None:
                        return None
                    if chased[0] == RCODE.SERVFAIL:
                        return chased
                    answers.extend(chased[1])
        return RCODE.NOERROR, answers

    def answer(self, packet):
        """The reply bytes for one query packet, or None to stay silent."""
        try:
            request = DNSRecord.parse(packet)
        except Exception:
            return None
        with self.lock:
            self.count += 1
            delay = self.delay
        if delay:
            time.sleep(delay)
        reply = request.reply()
        reply.header.ra = 0
        reply.header.aa = 1
        if not request.questions:
            reply.header.rcode = RCODE.FORMERR
            return reply.pack()
        q = request.questions[0]
        # The raw labels, not str(qname): dnslib escapes spaces and the like in text form.
        name = ".".join(label.decode("utf-8", "replace") for label in q.qname.label)
        result = self.lookup(name, q.qtype)
        if result is None:
            return None
        rcode, answers = result
        reply.header.rcode = rcode
        for owner, rtype, value in answers:
            owner_label = DNSLabel([part.encode("utf-8") for part in owner.split(".") if part])
            reply.add_answer(RR(owner_label, TYPES[rtype], rdata=rdata(rtype, value), ttl=self.ttl))
        return reply.pack()


def serve_udp(sock, zone):
    while True:
        try:
            packet, peer = sock.recvfrom(65535)
        except OSError:
            return

        def work(packet=packet, peer=peer):
            data = zone.answer(packet)
            if data is None:
                return
            if len(data) > 512:  # classic UDP limit: truncate and let the client use TCP
                request = DNSRecord.parse(packet)
                reply = request.reply()
                reply.header.tc = 1
                reply.header.aa = 1
                data = reply.pack()
            try:
                sock.sendto(data, peer)
            except OSError:
                pass

        threading.Thread(target=work, daemon=True).start()


def serve_tcp_client(conn, zone):
    with conn:
        conn.settimeout(30)
        try:
            while True:
                head = conn.recv(2, socket.MSG_WAITALL)
                if len(head) < 2:
                    return
                (length,) = struct.unpack("!H", head)
                packet = conn.recv(length, socket.MSG_WAITALL)
                data = zone.answer(packet)
                if data is None:
                    time.sleep(30)
                    return
                conn.sendall(struct.pack("!H", len(data)) + data)
        except OSError:
            return


def serve_tcp(sock, zone):
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        threading.Thread(target=serve_tcp_client, args=(conn, zone), daemon=True).start()


def bind(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        udp = socket.socket(family, socket.SOCK_DGRAM)
        udp.bind((host, port))
        chosen = udp.getsockname()[1]
        tcp = socket.socket(family, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind((host, chosen))
        except OSError:
            udp.close()
            tcp.close()
            if port:
                raise
            continue
        tcp.listen(64)
        return udp, tcp, chosen
    raise OSError("no free port for UDP and TCP together")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zone", help="zone data file (JSON or YAML mapping of name to records)")
    parser.add_argument("--suite", help="test suite as JSON (a list of scenarios with zonedata)")
    parser.add_argument("--scenario", type=int, default=0, help="scenario of --suite to serve first")
    parser.add_argument("--convert", help="print the YAML test suite in this file as JSON and exit")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (127.0.0.1 or ::1)")
    parser.add_argument("--port", type=int, default=0, help="port for UDP and TCP; 0 picks a free one")
    parser.add_argument("--delay-ms", type=int, default=0, help="answer every query this much later")
    parser.add_argument("--ttl", type=int, default=300, help="TTL of every answer")
    args = parser.parse_args()

    if args.convert:
        json.dump(load_file(args.convert), sys.stdout, ensure_ascii=True, indent=1)
        sys.stdout.write("\n")
        return

    if args.host not in ("127.0.0.1", "::1", "localhost"):
        parser.error("only loopback addresses may be bound")
    zone = Zone()
    zone.delay = args.delay_ms / 1000.0
    zone.ttl = args.ttl
    suite = []
    if args.suite:
        suite = load_file(args.suite)
        zone.zone = compile_zone(suite[args.scenario].get("zonedata"))
    elif args.zone:
        data = load_file(args.zone)
        if isinstance(data, list):
            data = data[0]
        zone.zone = compile_zone(data.get("zonedata", data))

    udp, tcp, port = bind(args.host, args.port)
    threading.Thread(target=serve_udp, args=(udp, zone), daemon=True).start()
    threading.Thread(target=serve_tcp, args=(tcp, zone), daemon=True).start()
    print(port, flush=True)

    for line in sys.stdin:
        words = line.split(None, 1)
        if not words:
            continue
        command, rest = words[0], (words[1].strip() if len(words) > 1 else "")
        try:
            if command == "scenario":
                new = compile_zone(suite[int(rest)].get("zonedata"))
                with zone.lock:
                    zone.zone = new
                print("ok", flush=True)
            elif command == "zone":
                data = load_file(rest)
                new = compile_zone(data.get("zonedata", data))
                with zone.lock:
                    zone.zone = new
                print("ok", flush=True)
            elif command == "delay":
                with zone.lock:
                    zone.delay = int(rest) / 1000.0
                print("ok", flush=True)
            elif command == "count":
                with zone.lock:
                    print(zone.count, flush=True)
            elif command == "loops":
                if rest not in ("partial", "servfail"):
                    raise ValueError("loops takes partial or servfail")
                with zone.lock:
                    zone.loops = rest
                print("ok", flush=True)
            elif command == "reset":
                with zone.lock:
                    zone.count = 0
                print("ok", flush=True)
            else:
                print("error unknown command", flush=True)
        except Exception as error:  # keep serving; the caller sees the error line
            print("error " + str(error).replace("\n", " "), flush=True)


if __name__ == "__main__":
    main()
