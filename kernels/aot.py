"""Ahead-of-time compilation of a kernel launch for a GPU architecture, on a machine without one.

``compile_launch(launch, arch)`` specialises the launch's arguments exactly as Triton's JIT does at
a real launch (pointer dtypes, 16-byte alignment, integers equal to 1 or divisible by 16, the
constexprs and warps/stages), then runs Triton's whole pipeline for ``GPUTarget("cuda", arch, 32)``:
TTIR -> TTGIR -> LLVM -> PTX -> ``ptxas`` (shipped inside the triton wheel) -> cubin. No CUDA driver
is needed. The resource usage comes from ``ptxas -v`` (registers, spill stores/loads, stack) and
from the compiled kernel's metadata (the shared memory Triton allocates). A launch also fails
here when it could not run on the architecture: more shared memory than one block may use, or more
registers than one SM has for the block's threads.

Compiling needs the real ``@triton.jit`` kernels, so it refuses to run under ``TRITON_INTERPRET=1``
(the interpreter replaces ``triton.language`` while kernels are decorated).
"""
from __future__ import annotations

import contextlib
import io
import re
import tempfile
from dataclasses import dataclass

from ._triton_common import FixedLaunch, interpreting

WARP_SIZE = 32
# Per-block limits from the CUDA C++ Programming Guide, "Technical Specifications per Compute
# Capability": opt-in shared memory per block (8.0: 163 KB, 9.0: 227 KB), 64 K 32-bit registers
# per SM / per block, at most 255 registers per thread.
MAX_SHARED_BYTES = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
MAX_REGISTERS_PER_BLOCK = 64 * 1024
MAX_REGISTERS_PER_THREAD = 255
ARCH_NAMES = {80: "sm_80", 86: "sm_86", 89: "sm_89", 90: "sm_90"}

_REGS = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


class AotError(RuntimeError):
    """Ahead-of-time compilation cannot run here (interpreter mode, unknown architecture)."""


@dataclass
class CompileResult:
    ok: bool
    num_regs: int | None = None
    spills: int | None = None          # bytes of spill stores + spill loads (ptxas -v)
    stack_bytes: int | None = None
    shared_bytes: int | None = None    # shared memory Triton allocates per block
    error: str | None = None
    signature: dict | None = None      # Triton's specialised signature ('*bf16', 'i32', 'constexpr', ...)
    specialized: dict | None = None    # runtime arguments specialised to constants (integers equal to 1)
    aligned: list | None = None        # arguments Triton assumes divisible by 16 (pointers: 16-byte aligned)


def _triton_launch_spec(fn, launch: FixedLaunch, backend):
    """(options, signature, constexprs, attrs) exactly as ``JITFunction.run`` derives them."""
    from triton.runtime.jit import create_function_from_signature  # noqa: PLC0415

    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = {**launch.constexprs, **launch.options}
    bound, specialization, options = binder(*launch.args, **kwargs)
    return fn._pack_args(backend, kwargs, bound, specialization, options)


def _arg_names(fn, paths) -> list[str]:
    return [fn.arg_names[p[0]] for p in sorted(paths)]


def _parse_ptxas(log: str) -> tuple[int | None, int | None, int | None]:
    regs, spills = _REGS.search(log), _SPILLS.search(log)
    if regs is None or spills is None:
        return None, None, None
    stack, stores, loads = (int(g) for g in spills.groups())
    return int(regs.group(1)), stores + loads, stack


def resource_errors(arch: int, num_warps: int, num_regs: int, shared_bytes: int) -> list[str]:
    """Why a block of this kernel could not launch on ``arch`` (empty when it can)."""
    errors = []
    if shared_bytes > MAX_SHARED_BYTES[arch]:
        errors.append(f"shared memory {shared_bytes} B > {MAX_SHARED_BYTES[arch]} B per block on sm_{arch}")
    threads = num_warps * WARP_SIZE
    if num_regs * threads > MAX_REGISTERS_PER_BLOCK:
        errors.append(f"{num_regs} registers x {threads} threads > {MAX_REGISTERS_PER_BLOCK} per block")
    if num_regs > MAX_REGISTERS_PER_THREAD:
        errors.append(f"{num_regs} registers > {MAX_REGISTERS_PER_THREAD} per thread")
    return errors


def compile_launch(launch: FixedLaunch, arch: int) -> CompileResult:
    """Compile one launch for ``sm_<arch>`` in a fresh cache (so ptxas runs and reports)."""
    import triton  # noqa: PLC0415
    from triton import knobs  # noqa: PLC0415
    from triton.backends.compiler import GPUTarget  # noqa: PLC0415
    from triton.compiler import ASTSource, make_backend  # noqa: PLC0415
    from triton.runtime.jit import JITFunction  # noqa: PLC0415

    if interpreting():
        raise AotError("ahead-of-time compilation needs TRITON_INTERPRET unset or 0 (the interpreter "
                       "replaces triton.language while kernels are decorated)")
    if arch not in MAX_SHARED_BYTES:
        raise AotError(f"unknown architecture sm_{arch}; known: {', '.join(map(str, MAX_SHARED_BYTES))}")
    fn = launch.kernel
    if not isinstance(fn, JITFunction):
        raise AotError(f"{fn!r} is not a @triton.jit function (TRITON_INTERPRET=1 when it was imported?)")
    target = GPUTarget("cuda", arch, WARP_SIZE)
    backend = make_backend(target)
    options, signature, constexprs, attrs = _triton_launch_spec(fn, launch, backend)
    result = CompileResult(ok=False, signature={k: v for k, v in signature.items() if v != "constexpr"},
                           specialized={fn.arg_names[p[0]]: v for p, v in constexprs.items()
                                        if fn.arg_names[p[0]] not in launch.constexprs},
                           aligned=_arg_names(fn, [p for p, a in attrs.items() if a]))
    log = io.StringIO()
    try:
        with tempfile.TemporaryDirectory(prefix="dgae-aot-") as cache, knobs.cache.scope(), \
                knobs.nvidia.scope(), contextlib.redirect_stdout(log):
            knobs.cache.dir = cache              # a cache hit would skip ptxas and its report
            knobs.nvidia.dump_ptxas_log = True   # ptxas -v's report, printed by Triton
            compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                      options=options.__dict__)
    except Exception as exc:  # noqa: BLE001 - any compiler failure is this launch's result
        result.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        return result
    result.num_regs, result.spills, result.stack_bytes = _parse_ptxas(log.getvalue())
    result.shared_bytes = int(compiled.metadata.shared)
    if result.num_regs is None:
        result.error = "no ptxas resource report"
        return result
    errors = resource_errors(arch, compiled.metadata.num_warps, result.num_regs, result.shared_bytes)
    if result.spills:
        errors.append(f"{result.spills} bytes of register spills")
    result.error = "; ".join(errors) or None
    result.ok = not errors
    return result


def specialization_key(launch: FixedLaunch) -> str:
    """What makes two launches one compiled kernel (Triton's cache key, minus the target)."""
    from triton.backends.compiler import GPUTarget  # noqa: PLC0415
    from triton.compiler import make_backend  # noqa: PLC0415

    fn = launch.kernel
    _, signature, constexprs, attrs = _triton_launch_spec(fn, launch, make_backend(GPUTarget("cuda", 90, WARP_SIZE)))
    return repr((fn.__name__, sorted(signature.items()), sorted(constexprs.items()), sorted(attrs.items()),
                 sorted(launch.options.items())))
