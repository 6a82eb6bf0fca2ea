"""Transposing copy (B, X, Y) -> contiguous (B, Y, X) on CPU as a blocked C loop (ops/_cpu_jit).

torch's CPU copy of a transposed view is slow on this project's 2-core machine: a (8192, 1792)
float32 slice of a wider tensor took 152 ms on 1 thread as per-batch 2-D copies (170 ms as one 3-D
copy), here 50 ms; a contiguous (1792, 8192) one 46 -> 39 ms (2 threads: 80 -> 29 and 46 -> 25 ms).
32 x 32 tiles: the tile's source rows are copied into a buffer, then each output row gathers its
column of the buffer (in L1), so memory is read and written in unit-stride runs; any source strides,
OpenMP over tiles. Other dtypes and devices: torch.
"""
from __future__ import annotations

import torch

from ._cpu_jit import CKernel, I64, PTR, ptr

__all__ = ["transpose_copy"]

_C_SOURCE = r"""
#define TB 32
/* out (B, Y, X) contiguous; in element (b, i, j) at b * sb + i * si + j * sj */
#define DEF_T(TY, SUF)                                                                            \
void transpose_##SUF(const TY* in, int64_t sb, int64_t si, int64_t sj, TY* out, int64_t B, int64_t X, \
                     int64_t Y, int64_t nthreads) {                                              \
    const int64_t ni = (X + TB - 1) / TB, nj = (Y + TB - 1) / TB;                                 \
    _Pragma("omp parallel for collapse(3) schedule(static) num_threads(nthreads) if (B * X * Y > 65536)") \
    for (int64_t b = 0; b < B; ++b)                                                               \
        for (int64_t ti = 0; ti < ni; ++ti)                                                       \
            for (int64_t tj = 0; tj < nj; ++tj) {                                                 \
                TY buf[TB][TB];                                                                   \
                const int64_t i0 = ti * TB, j0 = tj * TB;                                         \
                const int64_t mi = X - i0 < TB ? X - i0 : TB, mj = Y - j0 < TB ? Y - j0 : TB;     \
                for (int64_t i = 0; i < mi; ++i) {                       /* the tile's rows in */ \
                    const TY* src = in + b * sb + (i0 + i) * si + j0 * sj;                        \
                    if (sj == 1) memcpy(buf[i], src, sizeof(TY) * mj);                            \
                    else for (int64_t j = 0; j < mj; ++j) buf[i][j] = src[j * sj];                \
                }                                                                                 \
                for (int64_t j = 0; j < mj; ++j) {                                                \
                    TY* dst = out + (b * Y + j0 + j) * X + i0;                                    \
                    for (int64_t i = 0; i < mi; ++i) dst[i] = buf[i][j];                          \
                }                                                                                 \
            }                                                                                     \
}
DEF_T(float, f32)
DEF_T(double, f64)
"""

_ARGS = [PTR, I64, I64, I64, PTR, I64, I64, I64, I64]
KERNEL = CKernel("transpose", _C_SOURCE, {"transpose_f32": _ARGS, "transpose_f64": _ARGS})


def transpose_copy(t: torch.Tensor) -> torch.Tensor:
    """(B, X, Y) -> contiguous (B, Y, X): ``t.transpose(1, 2).contiguous()``, blocked on CPU."""
    if t.dim() != 3:
        raise ValueError(f"transpose_copy: argument 't' must have 3 dimensions (B, X, Y), got {tuple(t.shape)}")
    # under torch.compile the copy is left to the compiler (dynamo cannot trace the ctypes call)
    fast = t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and not torch.compiler.is_compiling()
    lib = KERNEL.load() if fast else None
    if lib is None:
        return t.transpose(1, 2).contiguous()
    B, X, Y = t.shape
    out = t.new_empty(B, Y, X)
    fn = lib.transpose_f64 if t.dtype == torch.float64 else lib.transpose_f32
    fn(ptr(t, strided=True), t.stride(0), t.stride(1), t.stride(2), ptr(out), B, X, Y, torch.get_num_threads())
    return out
