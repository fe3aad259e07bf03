"""The c10d rendezvous port of a Slurm job, picked on its head node by the batch script (which
runs this file as a here-document: standard library only).

A port taken straight from the job id (20000 + id % 20000) was sometimes in use: most of that
range lies inside Linux's ephemeral range (32768-60999), where any outgoing connection on the
node may hold it. torchrun's agent then fails to host the store, falls back to connecting as a
client to a port nobody serves, and the job dies after two minutes of timeouts. So: start at a
port derived from the job id (two jobs on one node start apart), skip the ephemeral range (no
connection can take a port there between this check and torchrun's bind), and take the first
port that binds as the store's server will (all addresses, SO_REUSEADDR).
"""

from __future__ import annotations

import errno
import socket
import sys

LOWEST_PORT = 20000
LINUX_EPHEMERAL = (32768, 60999)


def ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = map(int, f.read().split())
        return low, high
    except (OSError, ValueError):
        return LINUX_EPHEMERAL


def candidate_ranges() -> list[range]:
    """Ports from LOWEST_PORT up, less the ephemeral range (all of them if nothing is left)."""
    low, high = ephemeral_range()
    outside = [r for r in (range(LOWEST_PORT, min(low, 65536)), range(max(high + 1, LOWEST_PORT), 65536)) if len(r)]
    return outside or [range(LOWEST_PORT, 65536)]


def candidates(job_id: int) -> list[int]:
    """Every candidate port once, starting at the one the job id selects."""
    ports = [port for r in candidate_ranges() for port in r]
    start = job_id % len(ports)
    return ports[start:] + ports[:start]


def preferred_port(job_id: int) -> int:
    return candidates(job_id)[0]


def is_free(port: int) -> bool:
    for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # no IPv6 on this node
            continue
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((address, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return False
                if family == socket.AF_INET:
                    raise
    return True


def pick(job_id: int) -> int:
    for port in candidates(job_id):
        if is_free(port):
            return port
    raise SystemExit(f"no free port for the rendezvous on this node (tried every port from {LOWEST_PORT} outside the ephemeral range)")


if __name__ == "__main__":
    print(pick(int(sys.argv[1])))
