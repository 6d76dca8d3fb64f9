#!/usr/bin/env python3
"""A DNS server on loopback that misbehaves on purpose, for Backstop's resolver tests.

It answers A queries over UDP and TCP on one port (printed on stdout when ready) and stops
when stdin closes. What it does depends on the first label of the name asked:
    good           192.0.2.1
    tc-good        UDP: the TC bit; TCP: 192.0.2.1
    tc-garbage     UDP: the TC bit; TCP: a length prefix and random octets
    tc-slow        UDP: the TC bit; TCP: accepts and never answers
    tc-late-slow   UDP: the TC bit after 500 ms; TCP: accepts and never answers
    wrong-id       UDP: a reply with another ID, then the right one (192.0.2.2)
    wrong-question UDP: a reply for another name, then the right one (192.0.2.3)
    other-port     UDP: a reply from another port, then the right one (192.0.2.4)
    garbage        UDP: random octets, nothing else
    servfail       SERVFAIL
    cname-short    a CNAME (TTL 5) to good.test that it leaves unfollowed (good.test: TTL 60)
    silent         nothing
Needs dnslib.
"""
import os
import socket
import struct
import sys
import threading

from dnslib import CNAME, QTYPE, RCODE, RR, A, DNSRecord


def reply(request, address=None, rcode=None, tc=False, name=None):
    r = request.reply()
    if rcode is not None:
        r.header.rcode = rcode
    if tc:
        r.header.tc = 1
    if address:
        r.add_answer(RR(name or request.q.qname, QTYPE.A, rdata=A(address), ttl=60))
    return r.pack()


def udp_answers(packet):
    """(payload, from_other_port) pairs to send for one query."""
    request = DNSRecord.parse(packet)
    kind = str(request.q.qname).split(".")[0]
    if kind == "good":
        return [(reply(request, "192.0.2.1"), False)]
    if kind == "tc-late-slow":
        return [(reply(request, tc=True), "late")]
    if kind.startswith("tc-"):
        return [(reply(request, tc=True), False)]
    if kind == "wrong-id":
        wrong = DNSRecord.parse(reply(request, "198.51.100.66"))
        wrong.header.id = (request.header.id + 1) & 0xFFFF
        return [(wrong.pack(), False), (reply(request, "192.0.2.2"), False)]
    if kind == "wrong-question":
        other = DNSRecord.question("elsewhere.test")
        other.header.id = request.header.id
        return [(reply(other, "198.51.100.66"), False), (reply(request, "192.0.2.3"), False)]
    if kind == "other-port":
        return [(reply(request, "198.51.100.66"), True), (reply(request, "192.0.2.4"), False)]
    if kind == "garbage":
        return [(os.urandom(40), False)]
    if kind == "servfail":
        return [(reply(request, rcode=RCODE.SERVFAIL), False)]
    if kind == "cname-short":
        r = request.reply()
        r.add_answer(RR(request.q.qname, QTYPE.CNAME, rdata=CNAME("good.test."), ttl=5))
        return [(r.pack(), False)]
    return []


def serve_udp(sock, other):
    while True:
        packet, peer = sock.recvfrom(65535)
        try:
            for payload, from_other in udp_answers(packet):
                if from_other == "late":
                    threading.Timer(0.5, sock.sendto, args=(payload, peer)).start()
                    continue
                (other if from_other else sock).sendto(payload, peer)
        except Exception:
            pass


def serve_tcp_client(conn):
    with conn:
        head = conn.recv(2, socket.MSG_WAITALL)
        if len(head) < 2:
            return
        (length,) = struct.unpack("!H", head)
        request = DNSRecord.parse(conn.recv(length, socket.MSG_WAITALL))
        kind = str(request.q.qname).split(".")[0]
        if kind == "tc-good":
            data = reply(request, "192.0.2.1")
        elif kind == "tc-garbage":
            data = os.urandom(60)
        else:
            threading.Event().wait(60)
            return
        conn.sendall(struct.pack("!H", len(data)) + data)
        threading.Event().wait(1)


def serve_tcp(sock):
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=serve_tcp_client, args=(conn,), daemon=True).start()


def bind():
    """A UDP and a TCP socket on the same free loopback port (retried: the TCP port may be taken)."""
    for _ in range(50):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind(("127.0.0.1", port))
        except OSError:
            udp.close()
            tcp.close()
            continue
        tcp.listen(16)
        return udp, tcp, port
    raise OSError("no free port for UDP and TCP together")


def main():
    udp, tcp, port = bind()
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    threading.Thread(target=serve_udp, args=(udp, other), daemon=True).start()
    threading.Thread(target=serve_tcp, args=(tcp,), daemon=True).start()
    print(port, flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
