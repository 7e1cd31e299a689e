"""Machine operations numba does not offer, as numba intrinsics, for the compiled kernels.

* :func:`fma` is LLVM's fused multiply-add, ``a * b + c`` rounded once: the same
  bits on every CPU (one with no FMA unit computes it in software), so the scalar
  code of :mod:`.perturb` and the vector code of :mod:`.lanes` agree to the bit.
* :func:`trailing_zeros` counts a word's trailing zero bits (the lowest set bit's
  index), for walking bit masks of lanes and the levels of :mod:`.bla`'s table.
* :func:`prefer_512` lets LLVM use 512-bit vectors in the function that calls it.
* :func:`splat` makes a vector of one value in every element (LLVM IR code).
* :func:`vector_width` says how many float64 the vector code of :mod:`.lanes`
  and :mod:`.escape_round` puts in a vector for the CPU numba compiles for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, cast

import numba
from llvmlite import binding, ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_DOUBLE = ir.DoubleType()


def vector_width() -> int:
    """float64 to a vector: 8 where the CPU numba compiles for has 512-bit registers
    (AVX-512), else 4, a whole register's, so that LLVM keeps each vector in one:
    eight in two 256-bit halves need twice the registers, and the kernels' chains
    then spill to memory at every step (on an AVX2 CPU, AMD Zen 3, 20% slower).
    Only the speed depends on it, never a bit of the results. The CPU is the host
    unless numba is told another (NUMBA_CPU_FEATURES, NUMBA_CPU_NAME)."""
    config: Any = numba.config  # set at import: untyped
    if config.CPU_FEATURES:
        features = str(config.CPU_FEATURES)
    elif config.CPU_NAME and config.CPU_NAME != "host":
        features = ""  # a named CPU (generic, for one): assume no AVX-512
    else:
        features = str(binding.get_host_cpu_features().flatten())
    return 8 if "+avx512f" in features.split(",") else 4


def splat(builder: ir.IRBuilder, value: ir.Value, kind: ir.VectorType) -> ir.Value:
    """A vector of ``kind`` holding ``value`` in every element."""
    vector = ir.Constant(kind, None)
    for i in range(kind.count):
        vector = builder.insert_element(vector, value, ir.Constant(ir.IntType(32), i))
    return vector


def declare(module: ir.Module, name: str, kind: ir.FunctionType) -> ir.Function:
    """The LLVM function ``name`` of ``module``, declared on first use."""
    try:
        found: ir.Function = module.get_global(name)
    except KeyError:
        found = ir.Function(module, kind, name=name)
    return found


def _fma_codegen(typingctx: Any, a: Any, b: Any, c: Any) -> Any:
    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> ir.Value:
        kind = ir.FunctionType(_DOUBLE, [_DOUBLE] * 3)
        return builder.call(declare(builder.module, "llvm.fma.f64", kind), args)

    return types.float64(types.float64, types.float64, types.float64), codegen


def _trailing_zeros_codegen(typingctx: Any, word: Any) -> Any:
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        # is_zero_poison: callers never pass 0.
        return builder.cttz(args[0], cgutils.true_bit)

    return word(word), codegen


def _prefer_512_codegen(typingctx: Any) -> Any:
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        # LLVM prefers 256-bit vectors on Intel's AVX-512 CPUs unless told
        # otherwise, per function. Only this function's vector width changes;
        # nothing about its arithmetic does. (llvmlite only accepts a fixed list
        # of attribute names through its API, hence the plain set.add; should a
        # later llvmlite store attributes differently, the code is just slower.)
        with contextlib.suppress(TypeError):
            set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()

    return types.none(), codegen


fma = cast(Callable[[float, float, float], float], intrinsic(_fma_codegen))
trailing_zeros = cast(Callable[[Any], Any], intrinsic(_trailing_zeros_codegen))
prefer_512 = cast(Callable[[], None], intrinsic(_prefer_512_codegen))
