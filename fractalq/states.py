"""The job states that are final, for the coordinator and its clients alike.

A job in one of them never changes again: a client following it stops, and
the coordinator keeps only its counts. The values are the proto's JobState
numbers, which the coordinator's own enum shares.
"""

from __future__ import annotations

from fractalq.proto import fractalq_pb2 as pb

FINISHED: frozenset[int] = frozenset({pb.SUCCEEDED, pb.FAILED, pb.CANCELLED})
