"""One round of the float64 kernel's iterations, written in LLVM vector IR.

:mod:`.fast` keeps LANES pixels in flight in one lane array ``[z.re | z.im | c.re
| c.im | count]``; a *round* advances every lane ROUND iterations and returns the
bit mask of the lanes now done (escaped, or at the iteration limit). Left to
LLVM's loop vectoriser, the round held all 32 lanes' z, c and counts at once: on
a CPU with 16 vector registers (AVX2) half of them spilled to the stack, and the
count's masked update cost a blend on the ports the multiplications need.

Here the round is a numba *intrinsic* that emits the vector code itself:

* a vector is a register's WIDTH float64 (4 with AVX2, 8 with AVX-512), and the
  lanes go through in *groups* of GROUP = 4 vectors, in a loop (written out, the
  groups' code would crowd the CPU's cache of decoded instructions), each group
  all ROUND iterations with its state in registers, its four vectors
  interleaved so that each one's chain of dependent operations overlaps the
  others';
* a Julia round takes c as two numbers (every lane has the same c), so only z
  and the count live in registers;
* the count is an integer vector within the round, the comparison's mask
  subtracted from it (-1 where a lane iterated), added to the lane's float64
  count once at the end.

The arithmetic is the reference's (fractal/kernels.py), each operation rounded on
its own, in the same order: ``p = a*a``, ``q = b*b``, the lane iterates iff
``p + q <= 4`` (false for nan), then ``z.im = (a*b + a*b) + c.im`` and
``z.re = (p - q) + c.re``; a lane that has left the disc keeps its z (masked
updates), so its z and count at escape are exactly the reference's.

:func:`smooth_steps` is the same kind of code for the smoothing of
:mod:`.scheduler`'s batches of escaped points (shared with the perturbation
kernel): SMOOTH_STEPS iterations of the reference's smoothing step, ``z.re = (p -
q) + c.re``, ``z.im = (a + a)*b + c.im``, for SMOOTH_LANES points at once, each
frozen once ``|z|^2 > 2**32``. Left to LLVM, that loop made one chain of four
lanes at a time, whose latency held it to about 9 ns a point; this takes about
4 ms off the default Julia band's 956,000 escaped points.

numba's on-disk cache of :mod:`.fast`'s and :mod:`.scheduler`'s functions is keyed
on those files, not this one: after editing this file, clear
``fractalq/fractal/__pycache__``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from fractalq.fractal.intrinsics import splat, vector_width

# float64 per vector (intrinsics.vector_width). Only the speed depends on it (and
# on GROUP), never a bit of the results.
WIDTH = vector_width()
# Pixels in flight: CHAINS vectors of WIDTH float64 lanes.
LANES = 32
CHAINS = LANES // WIDTH
# Iterations per round, between two looks at which lanes are done (12 to 24
# measure about the same; fewer cost more bookkeeping, more leave finished lanes
# idle longer).
ROUND = 16
# Where each quantity lives in the lane array: [z.re | z.im | c.re | c.im | count],
# LANES each: one array at constant offsets, which the round reads as vectors.
ZR, ZI, CR, CI, COUNT = (n * LANES for n in range(5))
FIELDS = 5
# Vectors iterated together, their chains of dependent operations interleaved:
# four, all the lanes where registers are 512 bits wide, half of them otherwise.
# With 16 registers some counts spill, and still four chains measure faster
# than three (AVX2, Zen 3: 2.75 against 2.5 G iterations/s in the bulb view).
GROUP = 4

_D = ir.DoubleType()
_I64 = ir.IntType(64)
_V = ir.VectorType(_D, WIDTH)
_VI = ir.VectorType(_I64, WIDTH)


def _round(builder: ir.IRBuilder, data: ir.Value, limit: ir.Value, c: Any) -> ir.Value:
    """The round's code: c(base) gives the c (two vectors) of the lanes from `base`
    on, base being the index of a vector's first lane. Returns the done mask."""
    # Small integers n become float64 exactly as (n | 2**52's exponent) - 2**52.
    magic = ir.Constant(_VI, [0x4330000000000000] * WIDTH)
    two52 = ir.Constant(_V, [2.0**52] * WIDTH)
    four = ir.Constant(_V, [4.0] * WIDTH)
    zero = ir.Constant(_VI, [0] * WIDTH)

    def at(field: int, base: ir.Value) -> ir.Value:
        pointer = builder.gep(data, [builder.add(base, ir.Constant(_I64, field))])
        return builder.bitcast(pointer, _V.as_pointer())

    def load(field: int, base: ir.Value) -> ir.Value:
        return builder.load(at(field, base), align=8)

    # The groups one after the other, as a loop: written out, their code would
    # crowd the CPU's cache of decoded instructions.
    with cgutils.for_range(builder, ir.Constant(_I64, CHAINS // GROUP)) as loop:
        first = builder.mul(loop.index, ir.Constant(_I64, GROUP * WIDTH))
        bases = [builder.add(first, ir.Constant(_I64, k * WIDTH)) for k in range(GROUP)]
        cs = [c(base) for base in bases]
        z = [(load(ZR, base), load(ZI, base)) for base in bases]
        n = [zero for _ in bases]
        for _ in range(ROUND):
            for j in range(GROUP):
                a, b = z[j]
                p = builder.fmul(a, a)
                q = builder.fmul(b, b)
                stays = builder.fcmp_ordered("<=", builder.fadd(p, q), four)
                t = builder.fmul(a, b)
                zi = builder.fadd(builder.fadd(t, t), cs[j][1])
                zr = builder.fadd(builder.fsub(p, q), cs[j][0])
                z[j] = (builder.select(stays, zr, a), builder.select(stays, zi, b))
                n[j] = builder.sub(n[j], builder.sext(stays, _VI))
        for j, base in enumerate(bases):
            builder.store(z[j][0], at(ZR, base), align=8)
            builder.store(z[j][1], at(ZI, base), align=8)
            steps = builder.fsub(builder.bitcast(builder.or_(n[j], magic), _V), two52)
            builder.store(builder.fadd(load(COUNT, base), steps), at(COUNT, base), align=8)

    limits = splat(builder, limit, _V)
    result = ir.Constant(_I64, 0)
    for k in range(CHAINS):
        base = ir.Constant(_I64, k * WIDTH)
        a, b, m = load(ZR, base), load(ZI, base), load(COUNT, base)
        magnitude = builder.fadd(builder.fmul(a, a), builder.fmul(b, b))
        done = builder.or_(
            builder.fcmp_unordered(">", magnitude, four), builder.fcmp_ordered(">=", m, limits)
        )
        bits = builder.zext(builder.bitcast(done, ir.IntType(WIDTH)), _I64)
        result = builder.or_(result, builder.shl(bits, ir.Constant(_I64, k * WIDTH)))
    return result


def _julia_codegen(typingctx: Any, lanes: Any, limit: Any, c_re: Any, c_im: Any) -> Any:
    def codegen(context: Any, builder: ir.IRBuilder, sig: Any, args: Any) -> ir.Value:
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        c = (splat(builder, args[2], _V), splat(builder, args[3], _V))
        return _round(builder, data, args[1], lambda base: c)

    return types.uint64(lanes, limit, c_re, c_im), codegen


def _mandelbrot_codegen(typingctx: Any, lanes: Any, limit: Any) -> Any:
    def codegen(context: Any, builder: ir.IRBuilder, sig: Any, args: Any) -> ir.Value:
        data = context.make_array(sig.args[0])(context, builder, args[0]).data

        def c(base: ir.Value) -> tuple[ir.Value, ir.Value]:
            pointers = (
                builder.gep(data, [builder.add(base, ir.Constant(_I64, f))]) for f in (CR, CI)
            )
            re, im = (builder.load(builder.bitcast(p, _V.as_pointer()), align=8) for p in pointers)
            return re, im

        return _round(builder, data, args[1], c)

    return types.uint64(lanes, limit), codegen


julia_round = cast(Callable[[Any, float, float, float], Any], intrinsic(_julia_codegen))
mandelbrot_round = cast(Callable[[Any, float], Any], intrinsic(_mandelbrot_codegen))


# Where the escaped points are carried on to, for their smooth values: |z|^2 > 2**32.
SMOOTH_RADIUS_SQUARED = 2.0**32
# Iterations per call of smooth_steps, and the points it carries on at once.
SMOOTH_STEPS = 8
SMOOTH_LANES = GROUP * WIDTH


def _smooth_codegen(typingctx: Any, batch: Any, start: Any, stride: Any) -> Any:
    def codegen(context: Any, builder: ir.IRBuilder, sig: Any, args: Any) -> ir.Value:
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        start, stride = args[1], args[2]
        magic = ir.Constant(_VI, [0x4330000000000000] * WIDTH)
        two52 = ir.Constant(_V, [2.0**52] * WIDTH)
        radius = ir.Constant(_V, [SMOOTH_RADIUS_SQUARED] * WIDTH)
        zero = ir.Constant(_VI, [0] * WIDTH)

        def at(field: int, k: int) -> ir.Value:
            offset = builder.add(
                builder.add(start, builder.mul(stride, ir.Constant(stride.type, field))),
                ir.Constant(start.type, k * WIDTH),
            )
            return builder.bitcast(builder.gep(data, [offset]), _V.as_pointer())

        chains = range(GROUP)
        z = [(builder.load(at(0, k), align=8), builder.load(at(1, k), align=8)) for k in chains]
        c = [(builder.load(at(2, k), align=8), builder.load(at(3, k), align=8)) for k in chains]
        n = [zero for _ in chains]
        for _ in range(SMOOTH_STEPS):
            for k in chains:
                a, b = z[k]
                p = builder.fmul(a, a)
                q = builder.fmul(b, b)
                going = builder.fcmp_ordered("<=", builder.fadd(p, q), radius)
                zr = builder.fadd(builder.fsub(p, q), c[k][0])
                zi = builder.fadd(builder.fmul(builder.fadd(a, a), b), c[k][1])
                z[k] = (builder.select(going, zr, a), builder.select(going, zi, b))
                n[k] = builder.sub(n[k], builder.sext(going, _VI))
        result = ir.Constant(_I64, 0)
        for k in chains:
            a, b = z[k]
            builder.store(a, at(0, k), align=8)
            builder.store(b, at(1, k), align=8)
            steps = builder.fsub(builder.bitcast(builder.or_(n[k], magic), _V), two52)
            m = builder.fadd(builder.load(at(4, k), align=8), steps)
            builder.store(m, at(4, k), align=8)
            going = builder.fcmp_ordered(
                "<=", builder.fadd(builder.fmul(a, a), builder.fmul(b, b)), radius
            )
            bits = builder.zext(builder.bitcast(going, ir.IntType(WIDTH)), _I64)
            result = builder.or_(result, builder.shl(bits, ir.Constant(_I64, k * WIDTH)))
        return result

    return types.uint64(batch, start, stride), codegen


smooth_steps = cast(Callable[[Any, Any, Any], Any], intrinsic(_smooth_codegen))
