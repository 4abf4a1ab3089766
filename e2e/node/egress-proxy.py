#!/usr/bin/env python3
"""The API server's way to the real node: the HTTP CONNECT proxy its egress selector sends
`cluster` traffic to (kubectl logs, exec, port-forward: API server -> kubelet), on a Unix socket.

The API server listens on the host; the node's kubelet listens in the node's own network
namespace (e2e/node.sh), which no host route reaches. This proxy dials the node's addresses
(the CIDRs given) from a socket made inside that namespace, and any other address from the
host's, so nothing of the host's network changes. The API server names a node by its host name
(its preferred address type), which the host cannot resolve: NAME=ADDRESS arguments say where.

Usage: egress-proxy.py SOCKET NODE_NETNS (CIDR | NAME=ADDRESS)...
"""
import ctypes
import ipaddress
import os
import socket
import sys
import threading

CLONE_NEWNET = 0x40000000
LIBC = ctypes.CDLL(None, use_errno=True)


def setns(fd):
    if LIBC.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def dial(host, port, inside, node_ns, host_ns):
    # A socket belongs to the network namespace its thread was in when it was made; setns
    # moves this thread only, and back.
    if inside:
        setns(node_ns)
    try:
        return socket.create_connection((host, port), timeout=10)
    finally:
        if inside:
            setns(host_ns)


def pipe(source, target):
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            target.sendall(data)
    except OSError:
        pass
    try:
        target.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def serve(client, networks, names, node_ns, host_ns):
    with client:
        request = b""
        while b"\r\n\r\n" not in request:
            data = client.recv(8192)
            if not data or len(request) > 16384:
                return
            request += data
        line = request.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(line) != 3 or line[0] != "CONNECT":
            client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            return
        host, _, port = line[1].rpartition(":")
        host = names.get(host, host)
        try:
            address = ipaddress.ip_address(host.strip("[]"))
            inside = any(address in network for network in networks)
            upstream = dial(str(address), int(port), inside, node_ns, host_ns)
        except (ValueError, OSError) as error:
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
            print(f"CONNECT {line[1]}: {error}", file=sys.stderr, flush=True)
            return
        with upstream:
            upstream.settimeout(None)
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            rest = request.split(b"\r\n\r\n", 1)[1]
            if rest:
                upstream.sendall(rest)
            back = threading.Thread(target=pipe, args=(upstream, client), daemon=True)
            back.start()
            pipe(client, upstream)
            back.join()


def main():
    path, netns, places = sys.argv[1], sys.argv[2], sys.argv[3:]
    names = dict(place.split("=", 1) for place in places if "=" in place)
    networks = [ipaddress.ip_network(place) for place in places if "=" not in place]
    node_ns = os.open(netns, os.O_RDONLY)
    host_ns = os.open("/proc/self/ns/net", os.O_RDONLY)
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(64)
    while True:
        client, _ = listener.accept()
        threading.Thread(
            target=serve, args=(client, networks, names, node_ns, host_ns), daemon=True
        ).start()


if __name__ == "__main__":
    main()
