#!/usr/bin/env python3
"""Holds many idle policy connections to a Backstop server, for its memory test.

Usage: idle_clients.py PORT COUNT. Opens COUNT connections to 127.0.0.1:PORT, sends one
RCPT request on the first and on the last, prints each answer's action on a line of its
own, then keeps every connection open until stdin closes. The connections live in this
process, not in the test process: Foundation's Process.run, used by tests running beside
this one, crashed while the test process itself held 10,000 sockets.
"""
import resource
import socket
import sys

REQUEST = (b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=192.0.2.1\n"
           b"sender=a@example.org\nrecipient=b@example.com\ninstance=1.2.3\n\n")


def ask(conn: socket.socket) -> str:
    conn.sendall(REQUEST)
    data = b""
    while not data.endswith(b"\n\n"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip().replace("\n", " ")


def main() -> None:
    port, count = int(sys.argv[1]), int(sys.argv[2])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1024), hard))
    held = []
    for _ in range(count):
        # Answers may wait until the server has accepted them all (a debug build on a busy
        # machine): a minute, not a few seconds.
        held.append(socket.create_connection(("127.0.0.1", port), timeout=60))
    print(ask(held[0]), flush=True)
    print(ask(held[-1]), flush=True)
    sys.stdin.read()
    for conn in held:
        conn.close()


if __name__ == "__main__":
    main()
