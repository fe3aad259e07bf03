"""The Slurm batch script's rendezvous port picker (infra/backends/rendezvous_port.py), run as
the script runs it: on real sockets of this machine."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from pathlib import Path

from infra.backends import rendezvous_port
from infra.backends.rendezvous_port import candidate_ranges, ephemeral_range, pick, preferred_port


def occupy_as_a_client(port: int) -> list[socket.socket]:
    """Hold `port` the way an outgoing connection holds an ephemeral port: bound, connected,
    not listening, no SO_REUSEADDR."""
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        client.bind(("127.0.0.1", port))
        client.connect(server.getsockname())
    except OSError:
        client.close()
        server.close()
        raise
    accepted, _ = server.accept()
    return [server, client, accepted]


def test_a_port_held_by_a_connection_or_a_listener_is_skipped():
    # A job id whose port this test can take: another suite on the machine may hold some.
    for job_id in range(878154, 878254):
        preferred = preferred_port(job_id)
        with contextlib.suppress(OSError):
            held = occupy_as_a_client(preferred)
            break
    try:
        chosen = pick(job_id)
        assert chosen != preferred
        with socket.create_server(("", chosen)):  # the store's server can bind it
            pass
        with socket.create_server(("", chosen)):
            assert pick(job_id) not in (preferred, chosen)
    finally:
        for sock in held:
            sock.close()


def test_ports_lie_outside_the_ephemeral_range_and_jobs_start_apart():
    low, high = ephemeral_range()
    ranges = candidate_ranges()
    assert all(not (low <= port <= high) for r in ranges for port in (r[0], r[-1]))
    ports = [preferred_port(job_id) for job_id in range(1000, 1100)]
    assert len(set(ports)) == 100
    assert all(20000 <= port < 65536 and not (low <= port <= high) for port in ports)


def test_the_picker_runs_as_a_here_document_with_the_standard_library_only(tmp_path):
    """As the batch script runs it: `python - JOB_ID` with the file on stdin, outside the
    repository (a node's Python may not have tokenmill importable from the job's directory)."""
    source = Path(rendezvous_port.__file__).read_text()
    result = subprocess.run([sys.executable, "-I", "-", "878154"], input=source, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == pick(878154)
