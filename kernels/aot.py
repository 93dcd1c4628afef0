"""Compile a planned launch for a GPU that is not here, to read its PTX.

CI has no GPU, but Triton's NVIDIA backend (with the ptxas the wheel ships) compiles for
any target. Tests use this to check that the kernel moves 16-byte vectors where the
layout allows; the binding and specialization follow `JITFunction.run` (triton 3.x), so
the PTX is what a launch with the same arguments would compile.
"""

from __future__ import annotations

import re

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

from . import triton_kv


def ptx(launch: triton_kv.Launch, arch: int = 90) -> str:
    fn = JITFunction(triton_kv._kv_move)
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(launch.consts, num_warps=launch.num_warps)
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization,
                                                          options)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                          options=options.__dict__).asm["ptx"]


def global_accesses(ptx_text: str) -> set[str]:
    """The distinct global load/store instructions, e.g. 'ld.global.v2.b64'."""
    found = re.findall(r"\b((?:ld|st)\.global[\w.:]*)", ptx_text)
    # drop cache hints so callers match on width only
    return {re.sub(r"\.(?:L1|L2)::[\w:]+", "", f).replace(".L2::cache_hint", "") for f in found}
