"""Two task types, registered when fractalq imports this module.

``hello.greet`` (payload ``{"name": "..."}``) answers a greeting: quick, it
runs on one of the worker's threads. ``hello.primes`` (payload ``{"below": N}``)
counts the primes below N: CPU-bound, so a worker with ``--concurrency`` above
1 runs it in a child process of its own. Each result is JSON.
"""

from __future__ import annotations

import json
from typing import Any

from fractalq.tasks import InvalidPayload, TaskContext, task_type

MAX_NAME = 100
MAX_BELOW = 50_000_000


def _fields(payload: bytes) -> dict[str, Any]:
    try:
        fields = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidPayload(f"payload is not JSON: {error}") from None
    if not isinstance(fields, dict):
        raise InvalidPayload("payload must be a JSON object")
    return fields


def _name(payload: bytes) -> str:
    name = _fields(payload).get("name")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
        raise InvalidPayload(f'"name" must be a string of 1 to {MAX_NAME} characters')
    return name


def _below(payload: bytes) -> int:
    below = _fields(payload).get("below")
    if isinstance(below, bool) or not isinstance(below, int) or not 2 <= below <= MAX_BELOW:
        raise InvalidPayload(f'"below" must be a whole number from 2 to {MAX_BELOW}')
    return below


# `check` runs on the coordinator when a job is submitted: a bad payload is
# refused there, before it is queued.
@task_type("hello.greet", check=_name)
def greet(payload: bytes, context: TaskContext) -> bytes:
    greeting = {"greeting": f"hello, {_name(payload)}", "task": context.index}
    return json.dumps(greeting).encode()


@task_type("hello.primes", check=_below, cpu_bound=True, time_limit=600)
def primes(payload: bytes, context: TaskContext) -> bytes:
    below = _below(payload)
    sieve = bytearray([1]) * below
    sieve[:2] = b"\x00\x00"
    for n in range(2, int(below**0.5) + 1):
        if sieve[n]:
            sieve[n * n :: n] = bytes(len(range(n * n, below, n)))
    return json.dumps({"below": below, "primes": sum(sieve)}).encode()
