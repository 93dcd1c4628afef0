"""Triton implementation of the KV moves: one launch per call, any number of pages.

One kernel serves all four operations. A program moves a tile of BLOCK_T consecutive
staging tokens x BLOCK_W words of one component's rows, for one layer:

    grid = (cdiv(N * tokens, BLOCK_T), column chunks of all components, layers)

Staging side: token i of the launch is token `i % tokens` of page `i // tokens`, at
    page * page_stride + layer * layer_bytes + component_offset(c) + t * row_bytes[c]
(the object format's order, offsets from `PageGeometry`). Pool side: row `slots[i]` of
the component's buffer. Rows move as 8-, 4-, 2- or 1-byte integer words (the widest that
every address, stride and row size allows), and where everything is 16-byte aligned the
kernel says so with `tl.multiple_of`, so loads and stores compile to 16-byte vectors.

Pool slot s is at `s * stride` (flat pools) or `(s // page) * page_stride + (s % page) *
stride` (paged pools, see `layout`). Pool buffers are reached by address: two scalar
arguments for one layer, or a table of `[layers, components]` addresses in device memory
for all layers (one launch for the whole model; the table is cached by the addresses it
holds, so it is uploaded once).

Rows are split into column chunks of a power-of-two number of words that divides every
row (no column masks), unless that chunk would be under 64 bytes; then one masked chunk
covers a row. Tile size and warps come from `Tuning`; `python -m benchmarks.kernels --sweep`
compares settings on a GPU.

CUDA tensors run the compiled kernel. CPU tensors run the same kernel under Triton's
interpreter (slow; for tests): its `InterpretedFunction` is built explicitly, so which
one runs follows the tensors' device, not when triton was imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from sglang_objectcache.objformat import PageGeometry

from . import layout


@dataclass(frozen=True)
class Tuning:
    tile_bytes: int = 16384  # bytes one program moves: 8 x 16-byte vectors per thread at 4 warps
    max_chunk_bytes: int = 4096  # widest column chunk of a row
    num_warps: int = 4
    # small launches: halve tiles (down to min_tile_bytes) until there are this many
    # programs, so a few pages still spread over all SMs (an H100 has 132)
    min_programs: int = 4 * 132
    min_tile_bytes: int = 4096


GPU_TUNING = Tuning()
# the interpreter pays per program, not per byte: few, big programs
INTERPRETER_TUNING = Tuning(tile_bytes=1 << 20, max_chunk_bytes=1 << 16, num_warps=1,
                            min_programs=1)


class _DeviceFunction(JITFunction):
    """A helper `_kv_move` calls. Compiled, Triton inlines it into the kernel; under the
    interpreter the kernel is plain Python, so the call runs it interpreted too."""

    def __call__(self, *args, **kwargs):
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(self.fn)(*args, **kwargs)


@_DeviceFunction
def _pool_base(table_ptr, addr0, addr1, layer, second, NUM_COMP: tl.constexpr, USE_TABLE: tl.constexpr):
    """Byte address of this layer's buffer of the program's component."""
    if USE_TABLE:
        base = tl.load(table_ptr + layer * NUM_COMP + second.to(tl.int32))
    else:
        base = tl.where(second, addr1, addr0).to(tl.int64)
    return base


@_DeviceFunction
def _pool_offset(slot, second, stride_w, pstride0_w, pstride1_w, POOL_PAGE: tl.constexpr):
    """Word offset of pool slot `slot`: row `slot` of a flat pool, or its page's row."""
    if POOL_PAGE == 1:
        off = slot * stride_w
    else:
        pstride_w = tl.where(second, pstride1_w, pstride0_w).to(tl.int64)
        off = (slot // POOL_PAGE) * pstride_w + (slot % POOL_PAGE) * stride_w
    return off


@_DeviceFunction
def _copy(s_ptrs, p_ptrs, mask, GATHER: tl.constexpr):
    if GATHER:
        tl.store(s_ptrs, tl.load(p_ptrs, mask=mask), mask=mask)
    else:
        # staging is read once: keep it out of the way of the pool lines attention reads next
        tl.store(p_ptrs, tl.load(s_ptrs, mask=mask, eviction_policy="evict_first"), mask=mask)


def _kv_move(
    stage_ptr,  # staging, as words
    slots_ptr,  # int32/int64 [n_tokens]
    table_ptr,  # int64 [layers, NUM_COMP] pool byte addresses (USE_TABLE)
    addr0,  # pool byte address of component 0 (not USE_TABLE)
    addr1,  # ... of component 1
    n_tokens,
    page_stride_w,  # staging words from one page row to the next
    stride0_w,  # pool words from one slot to the next (within a page), component 0
    stride1_w,  # ... component 1
    pstride0_w,  # pool words from one page to the next (POOL_PAGE > 1), component 0
    pstride1_w,  # ... component 1
    T: tl.constexpr,  # tokens per page
    ROW0_W: tl.constexpr,
    ROW1_W: tl.constexpr,
    COMP1_OFF_W: tl.constexpr,  # geometry.component_offset(1), words
    LAYER_W: tl.constexpr,  # geometry.layer_bytes, words
    NUM_COMP: tl.constexpr,
    CHUNKS0: tl.constexpr,  # column chunks of component 0; the rest belong to component 1
    POOL_PAGE: tl.constexpr,  # 1: flat pool (slot s = row s); else [pages, POOL_PAGE, row]
    BLOCK_T: tl.constexpr,
    BLOCK_W: tl.constexpr,
    MASK_COLS: tl.constexpr,
    ALIGN_W: tl.constexpr,  # every word offset below is a multiple of this
    ALIGN_BYTES: tl.constexpr,  # every pool address is a multiple of this
    GATHER: tl.constexpr,
    USE_TABLE: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    layer = tl.program_id(2)

    second = pid_c >= CHUNKS0  # always false for MLA
    row_w = tl.where(second, ROW1_W, ROW0_W)
    stride_w = tl.where(second, stride1_w, stride0_w).to(tl.int64)
    comp_off = tl.where(second, COMP1_OFF_W, 0)
    col0 = tl.where(second, pid_c - CHUNKS0, pid_c) * BLOCK_W
    base = _pool_base(table_ptr, addr0, addr1, layer, second, NUM_COMP, USE_TABLE)
    pool_ptr = tl.multiple_of(base.to(tl.pointer_type(stage_ptr.dtype.element_ty)), ALIGN_BYTES)

    tok = pid_t.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    tmask = tok < n_tokens
    slot = tl.load(slots_ptr + tok, mask=tmask, other=0).to(tl.int64)
    page = tok // T
    t = tok - page * T
    s_off = page * page_stride_w + layer * LAYER_W + comp_off + t * row_w + col0
    p_off = _pool_offset(slot, second, stride_w, pstride0_w, pstride1_w, POOL_PAGE) + col0
    s_off = tl.multiple_of(s_off, ALIGN_W)
    p_off = tl.multiple_of(p_off, ALIGN_W)

    cols = tl.arange(0, BLOCK_W)
    s_ptrs = stage_ptr + s_off[:, None] + cols[None, :]
    p_ptrs = pool_ptr + p_off[:, None] + cols[None, :]
    mask = tmask[:, None]
    if MASK_COLS:
        mask = mask & (col0 + cols < row_w)[None, :]
    _copy(s_ptrs, p_ptrs, mask, GATHER)


_KERNELS: dict[bool, object] = {}


def _kernel(interpret: bool):
    if interpret not in _KERNELS:
        if interpret:
            from triton.runtime.interpreter import InterpretedFunction

            _KERNELS[interpret] = InterpretedFunction(_kv_move)
        else:
            _KERNELS[interpret] = JITFunction(_kv_move)
    return _KERNELS[interpret]


_TABLES: dict[tuple, torch.Tensor] = {}
_MAX_TABLES = 64


def _address_table(addrs: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A device tensor holding `addrs`. The key is its content, so a hit is never stale."""
    key = (str(device), addrs)
    table = _TABLES.get(key)
    if table is None:
        if len(_TABLES) >= _MAX_TABLES:
            _TABLES.pop(next(iter(_TABLES)))
        table = torch.tensor(addrs, dtype=torch.int64).to(device)
        _TABLES[key] = table
    return table


def _pow2_divisor(x: int) -> int:
    return x & -x


def _next_pow2(x: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, x))))


@dataclass(frozen=True)
class Launch:
    """Everything one kernel launch takes; `move` runs it, `aot.ptx` compiles it."""

    grid: tuple[int, int, int]
    args: tuple
    consts: dict
    num_warps: int


def _pool_strides(staging: torch.Tensor, per_comp: list) -> tuple[int, list[int], list[int]]:
    """Slots per pool page (1: flat pools), and each component's slot and page strides in
    bytes. Raises ValueError unless all layers' buffers agree and sit on the staging device."""
    all_rows = [r for rows in per_comp for r in rows]
    pages = {r.shape[1] for r in all_rows}
    if len(pages) != 1:
        raise ValueError("all pool buffers must be flat, or all paged alike")
    pool_page = pages.pop()
    strides, pstrides = [], []
    for c, rows in enumerate(per_comp):
        # flat: a slot is a row along dim 0; paged: pages along dim 0, slots along dim 1
        s = {(r.stride(1), r.stride(0)) if pool_page > 1 else (r.stride(0), 0) for r in rows}
        if len(s) != 1:
            raise ValueError(f"component {c}: pool buffers of all layers must share their strides")
        stride, pstride = s.pop()
        strides.append(stride)
        pstrides.append(pstride)
    for r in all_rows:
        if r.device != staging.device:
            raise ValueError(f"pool buffer on {r.device}, staging on {staging.device}")
    return pool_page, strides, pstrides


def _columns(row_w: list[int], w: int, align: int, tuning: Tuning) -> tuple[int, bool, list[int]]:
    """The column chunk in words, whether it is masked, and each component's chunk count."""
    chunk = min(_pow2_divisor(math.gcd(*row_w)), max(1, tuning.max_chunk_bytes // w))
    mask_cols = chunk * w < 64 and chunk < max(row_w)
    if mask_cols:  # tiny power-of-two chunks would waste the tile; mask one chunk per row
        chunk = min(_next_pow2(max(row_w)), max(1, tuning.max_chunk_bytes // w))
    chunks = [-(-r // chunk) for r in row_w]
    assert chunk % (align // w) == 0, "a column chunk must keep the 16-byte alignment promise"
    return chunk, mask_cols, chunks


def _block_tokens(n_tokens: int, chunk_bytes: int, column_programs: int, tuning: Tuning) -> int:
    """Tokens per program: a tile of `tuning.tile_bytes`, halved for launches too small to
    make `tuning.min_programs` programs."""
    block_t = min(_next_pow2(max(1, tuning.tile_bytes // chunk_bytes)), _next_pow2(n_tokens))
    while (block_t > 1 and block_t * chunk_bytes > tuning.min_tile_bytes
           and triton.cdiv(n_tokens, block_t) * column_programs < tuning.min_programs):
        block_t //= 2
    return block_t


def plan(staging: torch.Tensor, pools: Sequence[Sequence[torch.Tensor]], slots: torch.Tensor,
         g: PageGeometry, gather: bool, tuning: Tuning) -> Launch:
    """Word size, alignment, tiling and arguments for moving `len(pools)` layers."""
    per_comp = list(zip(*pools))  # [component][layer] uint8 [num_pages, page, row_bytes]
    pool_page, strides, pstrides = _pool_strides(staging, per_comp)

    # one word size and one alignment for every offset the kernel computes
    sizes = [*g.row_bytes, *strides, *pstrides, *staging.shape[1:], staging.stride(0),
             g.component_offset(g.num_components - 1), *(r.data_ptr() for rows in per_comp for r in rows)]
    align = layout.word_bytes(sizes, [staging], limit=16)
    w = min(align, 8)
    row_w = [rb // w for rb in g.row_bytes]
    stride_w = [s // w for s in strides] * (3 - g.num_components)
    pstride_w = [s // w for s in pstrides] * (3 - g.num_components)
    chunk, mask_cols, chunks = _columns(row_w, w, align, tuning)
    n_tokens = slots.numel()
    block_t = _block_tokens(n_tokens, chunk * w, sum(chunks) * len(pools), tuning)

    if len(pools) == 1:  # two scalar addresses; the table argument is unused
        table, use_table = slots, False
        addr = [rows[0].data_ptr() for rows in per_comp] * (3 - g.num_components)
    else:
        addrs = tuple(r.data_ptr() for layer_rows in zip(*per_comp) for r in layer_rows)
        table, use_table, addr = _address_table(addrs, staging.device), True, [0, 0]

    return Launch(
        grid=(triton.cdiv(n_tokens, block_t), sum(chunks), len(pools)),
        args=(layout.as_words(staging, w), slots, table, addr[0], addr[1], n_tokens,
              staging.stride(0) // w, stride_w[0], stride_w[1], pstride_w[0], pstride_w[1]),
        consts=dict(
            T=g.tokens,
            ROW0_W=row_w[0],
            ROW1_W=row_w[-1],
            COMP1_OFF_W=g.component_offset(g.num_components - 1) // w,
            LAYER_W=g.layer_bytes // w,
            NUM_COMP=g.num_components,
            CHUNKS0=chunks[0],
            POOL_PAGE=pool_page,
            BLOCK_T=block_t,
            BLOCK_W=chunk,
            MASK_COLS=mask_cols,
            ALIGN_W=align // w,
            ALIGN_BYTES=align,
            GATHER=gather,
            USE_TABLE=use_table,
        ),
        num_warps=tuning.num_warps,
    )


def move(staging: torch.Tensor, pools: Sequence[Sequence[torch.Tensor]], slots: torch.Tensor,
         g: PageGeometry, gather: bool, tuning: Tuning | None = None) -> None:
    """Same contract as `torch_kv.move`; one kernel launch."""
    if slots.numel() == 0:
        return
    interpret = staging.device.type == "cpu"
    if interpret:  # out-of-range slots would make the interpreter touch foreign memory
        num_slots = min(r.shape[0] * r.shape[1] for layer in pools for r in layer)
        if int(slots.min()) < 0 or int(slots.max()) >= num_slots:
            raise IndexError(f"token slot out of range [0, {num_slots})")
    launch = plan(staging, pools, slots, g, gather,
                  tuning or (INTERPRETER_TUNING if interpret else GPU_TUNING))
    kernel = _kernel(interpret)
    if interpret:
        kernel[launch.grid](*launch.args, **launch.consts, num_warps=launch.num_warps)
    else:
        with torch.cuda.device(staging.device):  # triton launches on the current device
            kernel[launch.grid](*launch.args, **launch.consts, num_warps=launch.num_warps)
