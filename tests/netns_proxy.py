"""A tiny HTTPS (CONNECT) proxy that lets pip inside test network namespaces reach PyPI.

    python tests/netns_proxy.py PORT PID [PID ...]

Listens on 127.0.0.1:PORT inside the network namespace of each PID (the
namespaces have no route out) and opens the upstream connections from this
process's own namespace. Only the hosts of pip's own package index, port 443, are forwarded;
anything else is refused. Used by tests/test_ray_up.py, whose namespaced
"machines" get `proxy = http://127.0.0.1:PORT` in their pip config.
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys
import threading

CLONE_NEWNET = 0x40000000
# The package index pip itself knows (its index and file hosts), HTTPS only.
from pip._internal.models.index import PyPI  # noqa: E402

ALLOWED = {(PyPI.netloc, 443), (PyPI.file_storage_domain, 443)}
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def listen_in(pid: int, port: int) -> socket.socket:
    """A listening socket on 127.0.0.1:port inside pid's network namespace."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        _setns(target)
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(64)
        finally:
            _setns(own)  # the socket stays in the namespace it was made in
    finally:
        os.close(own)
        os.close(target)
    return sock


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)  # pass the end of one direction on; the other may go on
        except OSError:
            pass


def _handle(client: socket.socket) -> None:
    try:
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            chunk = client.recv(4096)
            if not chunk:
                return
            head += chunk
        method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        host, _, port = target.rpartition(":")
        if method != "CONNECT" or (host, int(port or 0)) not in ALLOWED:
            client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        upstream = socket.create_connection((host, int(port)), timeout=30)
        upstream.settimeout(None)
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        rest = head.split(b"\r\n\r\n", 1)[1]
        if rest:
            upstream.sendall(rest)
        back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
        back.start()
        _pipe(client, upstream)
        back.join()
        upstream.close()
    except (OSError, ValueError):
        try:
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
        except OSError:
            pass
    finally:
        client.close()


def _serve(sock: socket.socket) -> None:
    while True:
        client, _ = sock.accept()
        threading.Thread(target=_handle, args=(client,), daemon=True).start()


def main(argv: list[str]) -> None:
    port, pids = int(argv[0]), [int(p) for p in argv[1:]]
    socks = [listen_in(pid, port) for pid in pids]
    print("ready", flush=True)
    threads = [threading.Thread(target=_serve, args=(s,), daemon=True) for s in socks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main(sys.argv[1:])
