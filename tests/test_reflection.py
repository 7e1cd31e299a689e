"""gRPC server reflection: what grpcurl does, against a coordinator with TLS and tokens.

The schema comes without a token; a call made with it still needs one.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from procs import ProcessGroup, Trust

from fractalq.endpoint import Endpoint


def test_reflection_tells_the_schema_without_a_token_and_calls_still_need_one(
    cluster: ProcessGroup, tmp_path: Path
) -> None:
    trust = Trust(tmp_path / "trust")
    coordinator = cluster.start_coordinator(trust=trust)
    anonymous = Endpoint(coordinator.address, trust.endpoint(coordinator.address, None).tls)
    with anonymous.channel() as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert set(database.get_services()) == {
            "fractalq.v1.Coordinator",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        }
        pool = DescriptorPool(database)
        service = pool.FindServiceByName("fractalq.v1.Coordinator")
        assert {"SubmitJob", "GetStats", "RegisterWorker"} <= set(service.methods_by_name)
        method = service.methods_by_name["GetStats"]
        request_type = GetMessageClass(method.input_type)
        response_type = GetMessageClass(method.output_type)
        submit = GetMessageClass(service.methods_by_name["SubmitJob"].input_type)
        assert {"task_type", "payload", "priority"} <= set(submit.DESCRIPTOR.fields_by_name)
        call = channel.unary_unary(
            f"/{service.full_name}/{method.name}",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        # A call built from the reflected schema alone, as grpcurl makes it.
        with pytest.raises(grpc.RpcError) as refused:
            call(request_type(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with trust.endpoint(coordinator.address, "reader").channel() as reader:
        stats = reader.unary_unary(
            f"/{service.full_name}/{method.name}",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )(request_type(), timeout=10)
    assert stats.jobs_active == 0
