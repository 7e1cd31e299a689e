"""One round of the perturbation kernel's plain iterations, written in LLVM vector IR.

numba leaves the perturbation loop scalar: each lane reads the reference orbit
at its own index, and LLVM will not vectorise a loop that reads arrays at
computed indices and writes others it cannot prove apart. So
:func:`perturbation_round` is a numba *intrinsic* that emits the vector code
itself: CHAINS vectors of WIDTH float64 lanes, ROUND iterations written out
with the state in registers, the chains interleaved so that each one's chain of
dependent operations overlaps the others'. A lane's reference point is one
16-byte load of its (re, im) from the orbit stored as pairs (on the CPUs
measured, a hardware gather is slower), its index moved out of the vector as a
32-bit integer, two to a 64-bit move.

The arithmetic is :mod:`.perturb`'s scalar loop (``_step`` there), fused alike
with ``llvm.fma`` (rounded once, the same bits on every CPU), so a pixel gets
the same bits whichever of the two iterates it. A lane whose z has left radius
2, or that has reached the iteration limit, keeps its state (masked updates), so
its z, count and derivative at its end are exact.

At the end of a round each lane's difference is compared with ``hint[m]``, the
squared radius of a skip of :mod:`.bla`'s table at its index (or the next): a
lane that could skip stops there for :mod:`.perturb`'s scalar code to skip it.
Returns two bit masks in one word: the lanes now done (escaped, or at the
limit) in bits 0..LANES-1, the lanes that could skip in bits 32..32+LANES-1.

numba's on-disk cache of :mod:`.perturb`'s functions is keyed on that file, not
this one: after editing this file, clear ``fractalq/fractal/__pycache__``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from fractalq.fractal.intrinsics import declare, splat, vector_width

# Pixels in flight, whatever the vectors: the scheduler's masks have 32 bits.
LANES = 32
WIDTH = vector_width()  # float64 per vector
CHAINS = LANES // WIDTH
# Iterations per round: between two looks at the lanes.
ROUND = 8
# The lane array: [dz.re | dz.im | dc.re | dc.im | der.re | der.im | g | m | k],
# LANES each (see perturb.py for the derivative and g).
DZR, DZI, DCR, DCI, DERR, DERI, G, M, K = (n * LANES for n in range(9))
FIELDS = 9

_D = ir.DoubleType()
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_V = ir.VectorType(_D, WIDTH)
_VI32 = ir.VectorType(_I32, WIDTH)
_VP = ir.VectorType(_I64, WIDTH // 2)  # two 32-bit indices to an element
_P = ir.VectorType(_D, 2)  # one reference point: (re, im)


def _round_codegen(
    typingctx: Any, lanes: Any, orbit: Any, hint: Any, base_start: Any, base_end: Any,
    limit: Any, start_end: Any,
) -> Any:  # fmt: skip
    signature = types.uint64(lanes, orbit, hint, base_start, base_end, limit, start_end)

    def codegen(context: Any, builder: ir.IRBuilder, sig: Any, args: Any) -> ir.Value:
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        points = builder.bitcast(
            context.make_array(sig.args[1])(context, builder, args[1]).data, _P.as_pointer()
        )
        hints = context.make_array(sig.args[2])(context, builder, args[2]).data
        fma = declare(builder.module, f"llvm.fma.v{WIDTH}f64", ir.FunctionType(_V, [_V, _V, _V]))
        start = splat(builder, args[3], _V)
        end_ = splat(builder, args[4], _V)
        limit_ = splat(builder, args[5], _V)
        first_end = splat(builder, args[6], _V)
        zero, one, two, four = (ir.Constant(_V, [v] * WIDTH) for v in (0.0, 1.0, 2.0, 4.0))
        low = ir.Constant(_I64, 0xFFFFFFFF)
        high = ir.Constant(_I64, 32)

        def at(offset: int) -> ir.Value:
            pointer = builder.gep(data, [ir.Constant(_I64, offset)])
            return builder.bitcast(pointer, _V.as_pointer())

        def indices(m: ir.Value) -> list[ir.Value]:
            # The indices as 32-bit integers (an orbit has at most
            # config.MAX_ITERATIONS + 1 points), moved out of the vector two at
            # a time: half the vector-to-register moves of one at a time.
            pairs = builder.bitcast(builder.fptoui(m, _VI32), _VP)
            index = []
            for i in range(WIDTH // 2):
                word = builder.extract_element(pairs, ir.Constant(_I32, i))
                index += [builder.and_(word, low), builder.lshr(word, high)]
            return index

        def reference(m: ir.Value) -> tuple[ir.Value, ir.Value]:
            index = indices(m)
            # Lane i's (re, im) is one 16-byte load: the even lanes' fill one
            # vector and the odd lanes' another, and one unpack of the two gives
            # the re parts in lane order, another the im parts.
            halves = []
            for parity in (0, 1):
                loaded = [
                    builder.load(builder.gep(points, [index[i]]), align=8)
                    for i in range(parity, WIDTH, 2)
                ]
                while len(loaded) > 1:
                    size = 2 * loaded[0].type.count
                    order = ir.Constant(ir.VectorType(_I32, size), list(range(size)))
                    loaded = [
                        builder.shuffle_vector(a, b, order)
                        for a, b in zip(loaded[::2], loaded[1::2], strict=True)
                    ]
                halves.append(loaded[0])
            even = [j for i in range(0, WIDTH, 2) for j in (i, i + WIDTH)]
            odd = [j + 1 for j in even]
            return (
                builder.shuffle_vector(halves[0], halves[1], ir.Constant(_VI32, even)),
                builder.shuffle_vector(halves[0], halves[1], ir.Constant(_VI32, odd)),
            )

        def gather(m: ir.Value) -> ir.Value:
            vector = ir.Constant(_V, None)
            for i, index in enumerate(indices(m)):
                value = builder.load(builder.gep(hints, [index]))
                vector = builder.insert_element(vector, value, ir.Constant(_I32, i))
            return vector

        def mul_add(a: ir.Value, b: ir.Value, c: ir.Value) -> ir.Value:
            return builder.call(fma, [a, b, c])

        def magnitude(fr: ir.Value, fi: ir.Value) -> ir.Value:
            # Not fused: the test must be the one perturb.py's scalar code makes.
            return builder.fadd(builder.fmul(fr, fr), builder.fmul(fi, fi))

        fields = (DZR, DZI, DCR, DCI, DERR, DERI, G, M, K)
        state = [
            [builder.load(at(field + c * WIDTH), align=8) for field in fields]
            for c in range(CHAINS)
        ]
        for _ in range(ROUND):
            for c in range(CHAINS):
                dzr, dzi, dcr, dci, derr, deri, g, m, k = state[c]
                zr, zi = reference(m)
                fr = builder.fadd(zr, dzr)
                fi = builder.fadd(zi, dzi)
                mag = magnitude(fr, fi)
                # false for nan: escaped
                stays = builder.and_(
                    builder.fcmp_ordered("<=", mag, four), builder.fcmp_ordered("<", k, limit_)
                )
                dz2 = mul_add(dzr, dzr, builder.fmul(dzi, dzi))
                near = builder.fcmp_ordered("<", mag, dz2)
                # The orbit followed has ended: its last index is one of the two
                # (see perturb.py's lanes), the only one of them m can reach.
                ended = builder.or_(
                    builder.fcmp_ordered("==", m, first_end), builder.fcmp_ordered("==", m, end_)
                )
                # Only a lane that stays rebases, so that each select below on
                # `stays` can keep the other side as it is (a masked operation).
                rebase = builder.and_(builder.or_(near, ended), stays)
                ar = builder.select(rebase, fr, dzr)
                ai = builder.select(rebase, fi, dzi)
                # der <- 2 z der + g
                tr = builder.fadd(fr, fr)
                ti = builder.fadd(fi, fi)
                nderr = mul_add(tr, derr, mul_add(builder.fneg(ti), deri, g))
                nderi = mul_add(tr, deri, builder.fmul(ti, derr))
                # dz <- (2 Z + dz) dz + dc. A rebased lane's Z is 0: its 2 Z + dz
                # is its z, the select's other side (a masked FMA).
                keeps = builder.not_(rebase)
                tr = builder.select(keeps, mul_add(two, zr, ar), ar)
                ti = builder.select(keeps, mul_add(two, zi, ai), ai)
                nr = mul_add(ar, tr, mul_add(builder.fneg(ti), ai, dcr))
                ni = mul_add(ai, tr, mul_add(ti, ar, dci))
                mm = builder.select(rebase, start, m)
                state[c] = [
                    builder.select(stays, nr, ar),
                    builder.select(stays, ni, ai),
                    dcr,
                    dci,
                    builder.select(stays, nderr, derr),
                    builder.select(stays, nderi, deri),
                    g,
                    builder.select(stays, builder.fadd(mm, one), mm),
                    builder.select(stays, builder.fadd(k, one), k),
                ]
        result = ir.Constant(_I64, 0)
        for c in range(CHAINS):
            dzr, dzi, _, _, derr, deri, _, m, k = state[c]
            kept = ((DZR, dzr), (DZI, dzi), (DERR, derr), (DERI, deri), (M, m), (K, k))
            for field, value in kept:
                builder.store(value, at(field + c * WIDTH), align=8)
            zr, zi = reference(m)
            mag = magnitude(builder.fadd(zr, dzr), builder.fadd(zi, dzi))
            finished = builder.or_(
                builder.fcmp_unordered(">", mag, four), builder.fcmp_ordered(">=", k, limit_)
            )
            dz2 = mul_add(dzr, dzr, builder.fmul(dzi, dzi))
            skips = builder.and_(
                builder.and_(builder.not_(finished), builder.fcmp_ordered(">", k, zero)),
                builder.fcmp_ordered("<", dz2, gather(m)),
            )
            for mask, shift in ((finished, 0), (skips, 32)):
                bits = builder.zext(builder.bitcast(mask, ir.IntType(WIDTH)), _I64)
                bits = builder.shl(bits, ir.Constant(_I64, shift + c * WIDTH))
                result = builder.or_(result, bits)
        return result

    return signature, codegen


perturbation_round = cast(
    Callable[[Any, Any, Any, float, float, float, float], Any], intrinsic(_round_codegen)
)
