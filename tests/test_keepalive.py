"""Keepalive: a call whose connection dies silently ends, so the client reconnects.

A proxy between client and coordinator stops forwarding without closing
anything, as a NAT or a load balancer that forgot the flow does. Without
keepalive a watch of a queued job would wait on that dead connection forever.
"""

from __future__ import annotations

import concurrent.futures
import socket
import threading

import grpc
import pytest
from procs import ProcessGroup

from fractalq import config
from fractalq.client import Client, ClientError
from fractalq.endpoint import Endpoint
from fractalq.proto import fractalq_pb2 as pb


class FreezingProxy:
    """Forwards TCP to ``target`` until :meth:`freeze`, then goes silent (never closes)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.frozen = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self.sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data or self.frozen.is_set():
                return  # frozen: what arrives is dropped, and nothing is closed
            sink.sendall(data)

    def freeze(self) -> None:
        self.frozen.set()

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def test_a_watch_on_a_silently_dead_connection_ends(
    cluster: ProcessGroup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "KEEPALIVE_TIME", 1.0)
    monkeypatch.setattr(config, "KEEPALIVE_TIMEOUT", 1.0)
    coordinator = cluster.start_coordinator()
    job = coordinator.client().submit(pb.SubmitJobRequest(task_type="noop", count=1)).job
    proxy = FreezingProxy(("127.0.0.1", coordinator.port))
    client = Client(Endpoint(proxy.address), timeout=10)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        stream = client.watch(job.job_id)
        assert next(stream).state == pb.QUEUED  # no worker: it stays queued, silent
        proxy.freeze()
        with pytest.raises(ClientError) as lost:
            # Keepalive (1 s + 1 s here) must end the call; without it this hangs.
            pool.submit(next, stream).result(timeout=20)
        assert lost.value.code == grpc.StatusCode.UNAVAILABLE, lost.value
    finally:
        client.close()
        proxy.close()
        pool.shutdown(wait=False, cancel_futures=True)
