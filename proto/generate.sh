#!/usr/bin/env bash
# Regenerates the Python stubs (and their type stubs) from fractalq.proto.
# The stubs are committed so that `pip install` needs no code generator;
# `proto/generate.sh --check` fails when they are stale (CI runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
out=.
if [ "${1:-}" = "--check" ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi
# The proto is compiled through the package's view of this folder, so the
# generated imports read `from fractalq.proto import fractalq_pb2`.
python -m grpc_tools.protoc -I . \
  --python_out="$out" --grpc_python_out="$out" \
  --mypy_out="$out" --mypy_grpc_out="$out" \
  fractalq/proto/fractalq.proto
if [ "${1:-}" = "--check" ]; then
  for f in fractalq_pb2.py fractalq_pb2.pyi fractalq_pb2_grpc.py fractalq_pb2_grpc.pyi; do
    if ! cmp -s "$out/fractalq/proto/$f" "proto/$f"; then
      echo "proto/$f is stale: run proto/generate.sh" >&2
      exit 1
    fi
  done
  echo "proto stubs are up to date"
fi
