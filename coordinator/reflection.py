"""gRPC server reflection: grpcurl, grpcui and Postman list the services and read their schema.

The reflection service answers about the coordinator's own service, the health
service and itself, from the descriptors compiled into this process; it is
open without a token like the health service (:data:`~fractalq.coordinator.access.OPEN_SERVICES`):
what it tells is ``proto/fractalq.proto``, public in the repository, and no
call made through what it tells skips the token check. Over TLS it is served
like everything else on the port (with ``--tls-client-ca``, only to clients
with a certificate). A malformed request is refused and counted like any
other (:func:`~.rpc.guarded`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection, reflection_pb2

from fractalq.coordinator import rpc
from fractalq.coordinator.refusals import INVALID, Refusals
from fractalq.coordinator.validation import loggable
from fractalq.proto import fractalq_pb2 as pb

SERVICES = (
    pb.DESCRIPTOR.services_by_name["Coordinator"].full_name,
    health.SERVICE_NAME,
    reflection.SERVICE_NAME,
)


def add_reflection(server: grpc.aio.Server, refusals: Refusals) -> None:
    servicer = reflection.aio.ReflectionServicer(SERVICES)

    def malformed(method: str, request: rpc.Malformed) -> None:
        refusals.refused(INVALID, f"ServerReflection/{method}: {loggable(str(request))}")

    def behaviour(method: Any, response_type: type[Message]) -> Callable[..., Any]:
        return rpc.guarded(getattr(servicer, method.name), method, response_type, malformed)

    descriptor = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]
    rpc.add_service(server, descriptor, reflection_pb2, behaviour)
