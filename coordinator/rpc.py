"""Serving gRPC services whose request parsing never raises.

gRPC parses a request with the deserializer its method handler names; when
that raises (bytes that are not a message at all), gRPC logs a traceback and
answers UNKNOWN with the exception's class name. So every service the
coordinator serves (its own and the standard health service) is registered
here, from its descriptor, with deserializers that turn such bytes into a
:class:`Malformed` value instead. The coordinator's own methods refuse it
themselves (they check every field anyway, :mod:`.service`); the methods of a
servicer written elsewhere are wrapped by :func:`guarded`, which answers
INVALID_ARGUMENT before the servicer sees it.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from types import ModuleType
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message

M = TypeVar("M")

_MAKERS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


class Malformed:
    """What a deserializer returns for bytes that are not a valid request."""

    def __init__(self, kind: str, error: str) -> None:
        self.kind = kind
        self.error = error

    def __str__(self) -> str:
        return f"not a valid {self.kind} message: {self.error}"


def deserializer(kind: type[Message]) -> Callable[[bytes], Message | Malformed]:
    def parse(data: bytes) -> Message | Malformed:
        try:
            return kind.FromString(data)
        except (DecodeError, RecursionError, ValueError) as error:
            return Malformed(kind.DESCRIPTOR.name, str(error) or "cannot be parsed")

    return parse


def set_status(
    context: grpc.aio.ServicerContext[Any, Any], code: grpc.StatusCode, message: str
) -> None:
    """End the call with ``code``, without raising.

    ``context.abort()`` raises, and gRPC keeps that exception in a reference
    cycle with the handler's frames, which hold the request: a large
    malformed request would stay in memory until the cyclic collector ran
    (tens of MB per request, measured). Setting the status does not.
    """
    context.set_code(code)
    context.set_details(message)


def guarded(
    method: Callable[..., Any],
    descriptor: MethodDescriptor,
    response_type: type[Message],
    on_malformed: Callable[[str, Malformed], None],
) -> Callable[..., Any]:
    """``method`` of a servicer, but a malformed request is refused with
    INVALID_ARGUMENT (``on_malformed`` hears of it) and never reaches it; in a
    stream of requests, the first malformed one ends the call so."""
    name = descriptor.name

    def refuse(request: Malformed, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        on_malformed(name, request)
        set_status(context, grpc.StatusCode.INVALID_ARGUMENT, str(request))

    if descriptor.client_streaming and descriptor.server_streaming:

        async def both(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            malformed: list[Malformed] = []

            async def checked() -> AsyncIterator[Any]:
                async for request in requests:
                    if isinstance(request, Malformed):
                        malformed.append(request)
                        return
                    yield request

            async for reply in method(checked(), context):
                yield reply
            if malformed:
                refuse(malformed[0], context)

        return both
    if descriptor.client_streaming:
        raise NotImplementedError(f"{name}: a stream of requests with one reply")

    if inspect.isasyncgenfunction(method):

        async def stream(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            if isinstance(request, Malformed):
                refuse(request, context)
                return
            async for reply in method(request, context):
                yield reply

        return stream

    asynchronous = inspect.iscoroutinefunction(method)

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, Malformed):
            refuse(request, context)
            return None if descriptor.server_streaming else response_type()
        if asynchronous:
            return await method(request, context)
        try:
            return method(request, context)
        except NotImplementedError:  # a generated stub's: it has set UNIMPLEMENTED
            return None if descriptor.server_streaming else response_type()

    return call


def add_service(
    server: grpc.aio.Server,
    service: ServiceDescriptor,
    messages: ModuleType,
    behaviour: Callable[[MethodDescriptor, type[Message]], Callable[..., Any]],
) -> None:
    """Serve every method of ``service`` (message classes from ``messages``), each
    with the handler ``behaviour(method, response_type)`` and a deserializer that
    never raises. Built from the descriptor, so that no method can be missed."""
    handlers = {}
    for method in service.methods:
        request_type = getattr(messages, method.input_type.name)
        response_type = getattr(messages, method.output_type.name)
        make = _MAKERS[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = make(
            behaviour(method, response_type),
            request_deserializer=deserializer(request_type),
            response_serializer=response_type.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)
