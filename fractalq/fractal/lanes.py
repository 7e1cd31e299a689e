"""One round of the perturbation kernel, written in LLVM vector IR.

numba leaves the perturbation loop scalar: each lane reads the reference orbit
at its own index, and LLVM will not vectorise a loop that reads arrays at
computed indices and writes others it cannot prove apart. So
:func:`perturbation_round` is a numba *intrinsic* that emits the vector code
itself: CHAINS vectors of WIDTH float64 lanes (``<8 x double>``: one AVX-512
register; LLVM splits it on narrower CPUs), ROUND iterations written out with
the state in registers, the four chains interleaved so that each one's chain of
dependent operations overlaps the others'. A lane's reference point is read with
WIDTH scalar loads (on the CPUs measured, faster than a hardware gather).

The arithmetic is :mod:`.perturb`'s, with the products fused (``llvm.fma``,
rounded once, the same bits on every CPU: one with no FMA unit computes it in
software). A lane whose z has left radius 2 keeps its state (masked updates), so
its z and count at escape are exact. Returns the bit mask of the lanes now done
(escaped, or at the iteration limit).

numba's on-disk cache of :mod:`.perturb`'s functions is keyed on that file, not
this one: after editing this file, clear ``fractalq/fractal/__pycache__``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

WIDTH = 8
CHAINS = 4
LANES = WIDTH * CHAINS
ROUND = 16
# The lane array: [dz.re | dz.im | dc.re | dc.im | m | end | k], LANES each.
DZR, DZI, DCR, DCI, M, END, K = (n * LANES for n in range(7))

_D = ir.DoubleType()
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_V = ir.VectorType(_D, WIDTH)
_VI = ir.VectorType(_I64, WIDTH)


def _declare(module: ir.Module, name: str, kind: ir.FunctionType) -> ir.Function:
    try:
        found: ir.Function = module.get_global(name)
    except KeyError:
        found = ir.Function(module, kind, name=name)
    return found


def _splat(builder: ir.IRBuilder, value: ir.Value, kind: ir.VectorType) -> ir.Value:
    vector = ir.Constant(kind, None)
    for i in range(WIDTH):
        vector = builder.insert_element(vector, value, ir.Constant(_I32, i))
    return vector


def _round_codegen(
    typingctx: Any, lanes: Any, orbit_re: Any, orbit_im: Any, base_start: Any, base_end: Any,
    limit: Any,
) -> Any:  # fmt: skip
    signature = types.uint64(lanes, orbit_re, orbit_im, base_start, base_end, limit)

    def codegen(context: Any, builder: ir.IRBuilder, sig: Any, args: Any) -> ir.Value:
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        re_base = context.make_array(sig.args[1])(context, builder, args[1]).data
        im_base = context.make_array(sig.args[2])(context, builder, args[2]).data
        fma = _declare(builder.module, "llvm.fma.v8f64", ir.FunctionType(_V, [_V, _V, _V]))
        start = _splat(builder, args[3], _V)
        end_ = _splat(builder, args[4], _V)
        limit_ = _splat(builder, args[5], _V)
        zero, one, two, four = (ir.Constant(_V, [v] * WIDTH) for v in (0.0, 1.0, 2.0, 4.0))

        def at(offset: int) -> ir.Value:
            pointer = builder.gep(data, [ir.Constant(_I64, offset)])
            return builder.bitcast(pointer, _V.as_pointer())

        def reference(m: ir.Value) -> tuple[ir.Value, ir.Value]:
            index = builder.fptoui(m, _VI)
            zr = zi = ir.Constant(_V, None)
            for i in range(WIDTH):
                lane = ir.Constant(_I32, i)
                k = builder.extract_element(index, lane)
                zr = builder.insert_element(
                    zr, builder.load(builder.gep(re_base, [k]), align=8), lane
                )
                zi = builder.insert_element(
                    zi, builder.load(builder.gep(im_base, [k]), align=8), lane
                )
            return zr, zi

        def mul_add(a: ir.Value, b: ir.Value, c: ir.Value) -> ir.Value:
            return builder.call(fma, [a, b, c])

        fields = (DZR, DZI, DCR, DCI, M, END, K)
        state = [
            [builder.load(at(field + c * WIDTH), align=8) for field in fields]
            for c in range(CHAINS)
        ]
        for _ in range(ROUND):
            for c in range(CHAINS):
                dzr, dzi, dcr, dci, m, end, k = state[c]
                zr, zi = reference(m)
                fr = builder.fadd(zr, dzr)
                fi = builder.fadd(zi, dzi)
                # Not fused: the test must be the one perturb.py's scalar code
                # makes when it records the lane, and the one below.
                mag = builder.fadd(builder.fmul(fr, fr), builder.fmul(fi, fi))
                stays = builder.fcmp_ordered("<=", mag, four)  # false for nan: escaped
                dz2 = mul_add(dzr, dzr, builder.fmul(dzi, dzi))
                near = builder.fcmp_ordered("<", mag, dz2)
                rebase = builder.or_(near, builder.fcmp_ordered("==", m, end))
                ar = builder.select(rebase, fr, dzr)
                ai = builder.select(rebase, fi, dzi)
                zr = builder.select(rebase, zero, zr)
                zi = builder.select(rebase, zero, zi)
                mm = builder.select(rebase, start, m)
                ee = builder.select(rebase, end_, end)
                # dz <- (2 Z + dz) dz + dc
                tr = mul_add(two, zr, ar)
                ti = mul_add(two, zi, ai)
                nr = mul_add(tr, ar, mul_add(builder.fneg(ti), ai, dcr))
                ni = mul_add(tr, ai, mul_add(ti, ar, dci))
                state[c] = [
                    builder.select(stays, nr, dzr),
                    builder.select(stays, ni, dzi),
                    dcr,
                    dci,
                    builder.select(stays, builder.fadd(mm, one), m),
                    builder.select(stays, ee, end),
                    builder.select(stays, builder.fadd(k, one), k),
                ]
        done = ir.Constant(_I64, 0)
        for c in range(CHAINS):
            dzr, dzi, _, _, m, end, k = state[c]
            for field, value in ((DZR, dzr), (DZI, dzi), (M, m), (END, end), (K, k)):
                builder.store(value, at(field + c * WIDTH), align=8)
            zr, zi = reference(m)
            fr = builder.fadd(zr, dzr)
            fi = builder.fadd(zi, dzi)
            mag = builder.fadd(builder.fmul(fr, fr), builder.fmul(fi, fi))
            finished = builder.or_(
                builder.fcmp_unordered(">", mag, four), builder.fcmp_ordered(">=", k, limit_)
            )
            bits = builder.zext(builder.bitcast(finished, ir.IntType(WIDTH)), _I64)
            done = builder.or_(done, builder.shl(bits, ir.Constant(_I64, c * WIDTH)))
        return done

    return signature, codegen


perturbation_round = cast(
    Callable[[Any, Any, Any, float, float, float], Any], intrinsic(_round_codegen)
)
