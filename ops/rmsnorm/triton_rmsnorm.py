"""RMSNorm Triton kernels (forward and backward), one program per block of rows and one group.

Layout: x, z, y, dy viewed as (M, D) with D = G * N channels split into G groups of N; the
program (pid_m, g) owns rows [pid_m * BLOCK_M, ...) of group g, so it loads one weight slice
w[g*N : (g+1)*N]. Equations (see ``cpu.py`` for the derivation):

    forward:  u = x [* silu(z)];  r = rsqrt(mean_N(u^2) + eps);  y = u * r * w [* silu(z)]
    backward: dn = dy [* silu(z)] * w;  du = r * (dn - n * mean_N(dn * n)),  n = u * r
              dw = sum_rows dy * n [* silu(z)]  (per-program partial sums, reduced in torch)

Statistics and accumulation in float32 (float64 when the input is float64: IS_F64).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import triton_interpret
from .._triton_aot import AotSpec
from .._triton_common import to_acc as _to_acc


@triton.jit
def _rmsnorm_fwd_kernel(
    X, W, Z, Y, RSTD,                       # X, Z, Y (M, D); W (D,); RSTD (M, G)
    M, D, N, G, eps,
    HAS_W: tl.constexpr, HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, IS_F64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    g = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    rmask = rows < M
    cmask = cols < N
    mask = rmask[:, None] & cmask[None, :]
    offs = rows[:, None].to(tl.int64) * D + g * N + cols[None, :]
    u = _to_acc(tl.load(X + offs, mask=mask, other=0.0), IS_F64)
    if HAS_Z:
        zz = _to_acc(tl.load(Z + offs, mask=mask, other=0.0), IS_F64)
        gate = zz * tl.sigmoid(zz)
        if not NORM_BEFORE_GATE:
            u = u * gate
    rstd = 1.0 / tl.sqrt(tl.sum(u * u, axis=1) / N + eps)          # (BLOCK_M,)
    y = u * rstd[:, None]
    if HAS_W:
        w = _to_acc(tl.load(W + g * N + cols, mask=cmask, other=0.0), IS_F64)
        y = y * w[None, :]
    if HAS_Z:
        if NORM_BEFORE_GATE:
            y = y * gate
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + rows.to(tl.int64) * G + g, rstd, mask=rmask)


@triton.jit
def _rmsnorm_bwd_kernel(
    X, W, Z, RSTD, DY, DX, DZ, DW_PART,      # DW_PART (num_programs(0), D)
    M, D, N, G,
    HAS_W: tl.constexpr, HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, IS_F64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    g = tl.program_id(1)
    nprog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_N)
    cmask = cols < N
    if HAS_W:
        w = _to_acc(tl.load(W + g * N + cols, mask=cmask, other=0.0), IS_F64)
        dw_acc = _to_acc(tl.zeros([BLOCK_N], dtype=tl.float32), IS_F64)
    for start in range(pid * BLOCK_M, M, nprog * BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        rmask = rows < M
        mask = rmask[:, None] & cmask[None, :]
        offs = rows[:, None].to(tl.int64) * D + g * N + cols[None, :]
        x = _to_acc(tl.load(X + offs, mask=mask, other=0.0), IS_F64)
        dy = _to_acc(tl.load(DY + offs, mask=mask, other=0.0), IS_F64)
        r = tl.load(RSTD + rows.to(tl.int64) * G + g, mask=rmask, other=0.0)
        u = x
        dn = dy
        if HAS_Z:
            zz = _to_acc(tl.load(Z + offs, mask=mask, other=0.0), IS_F64)
            sig = tl.sigmoid(zz)
            gate = zz * sig
            if NORM_BEFORE_GATE:
                dn = dy * gate
            else:
                u = x * gate
        n = u * r[:, None]
        if HAS_W:
            dw_acc += tl.sum(dn * n, axis=0)
            dn = dn * w[None, :]
        du = r[:, None] * (dn - n * (tl.sum(dn * n, axis=1) / N)[:, None])
        if HAS_Z:
            if NORM_BEFORE_GATE:
                dgate = dy * n
                if HAS_W:
                    dgate = dgate * w[None, :]
                dx = du
            else:
                dgate = du * x
                dx = du * gate
            dz = dgate * sig * (1.0 + zz * (1.0 - sig))
            tl.store(DZ + offs, dz.to(DZ.dtype.element_ty), mask=mask)
        else:
            dx = du
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
    if HAS_W:
        tl.store(DW_PART + pid.to(tl.int64) * D + g * N + cols, dw_acc, mask=cmask)


def _blocks(n: int) -> tuple[int, int, int]:
    block_n = triton.next_power_of_2(max(n, 1))
    if block_n > 65536:
        raise RuntimeError(f"rms_norm: backend='triton' supports groups of at most 65536 channels, got {n}; "
                           "use backend='cpu'")
    block_m = max(1, min(16, 2048 // block_n))
    # about 8 elements per thread per tile (no spills up to 2048-channel groups on sm_80/sm_90)
    num_warps = min(16, max(4, block_m * block_n // 256))
    return block_m, block_n, num_warps


def rms_norm_fwd(x, weight, z, eps: float, norm_before_gate: bool, group_size: int):
    """x, z (..., D); weight (D,) or None. Returns y (like x) and rstd (M, G)."""
    D = x.shape[-1]
    N, G = group_size, D // group_size
    x2 = x.reshape(-1, D).contiguous()
    M = x2.shape[0]
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = torch.empty_like(x2)
    rstd = torch.empty((M, G), dtype=ct, device=x.device)
    if M == 0:
        return y.reshape(x.shape), rstd
    z2 = z.reshape(-1, D).contiguous() if z is not None else None
    w = weight.contiguous() if weight is not None else None
    block_m, block_n, num_warps = _blocks(N)
    grid = (triton.cdiv(M, block_m), G)
    _rmsnorm_fwd_kernel[grid](
        x2, w if w is not None else x2, z2 if z2 is not None else x2, y, rstd,
        M, D, N, G, float(eps),
        HAS_W=w is not None, HAS_Z=z2 is not None, NORM_BEFORE_GATE=bool(norm_before_gate),
        IS_F64=ct == torch.float64, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps,
    )
    return y.reshape(x.shape), rstd


def _num_programs(m_blocks: int, device: torch.device) -> int:
    if triton_interpret() or device.type != "cuda":
        return min(m_blocks, 2)  # few programs: exercises the strided row loop cheaply
    return min(m_blocks, 4 * torch.cuda.get_device_properties(device).multi_processor_count)


def rms_norm_bwd(dy, x, weight, z, rstd, norm_before_gate: bool, group_size: int):
    """Returns dx, dweight (or None), dz (or None)."""
    D = x.shape[-1]
    N, G = group_size, D // group_size
    x2 = x.reshape(-1, D).contiguous()
    dy2 = dy.reshape(-1, D).contiguous()
    M = x2.shape[0]
    ct = rstd.dtype
    dx = torch.empty_like(x2)
    dz = torch.empty(z.shape, dtype=z.dtype, device=z.device).reshape(-1, D) if z is not None else None
    block_m, block_n, num_warps = _blocks(N)
    nprog = max(1, _num_programs(triton.cdiv(M, block_m), x.device))
    dw_part = torch.zeros((nprog, D), dtype=ct, device=x.device) if weight is not None else None
    if M > 0:
        z2 = z.reshape(-1, D).contiguous() if z is not None else None
        w = weight.contiguous() if weight is not None else None
        _rmsnorm_bwd_kernel[(nprog, G)](
            x2, w if w is not None else x2, z2 if z2 is not None else x2, rstd.contiguous(), dy2,
            dx, dz if dz is not None else dx, dw_part if dw_part is not None else rstd,
            M, D, N, G,
            HAS_W=w is not None, HAS_Z=z2 is not None, NORM_BEFORE_GATE=bool(norm_before_gate),
            IS_F64=ct == torch.float64, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps,
        )
    dweight = dw_part.sum(dim=0).to(weight.dtype) if weight is not None else None
    return dx.reshape(x.shape), dweight, (dz.reshape(z.shape) if dz is not None else None)


def _spec(name, sig, label, n, **const):
    block_m, block_n, num_warps = _blocks(n)
    return AotSpec(module=__name__, name=name, signature=sig, constexprs=dict(const, BLOCK_M=block_m, BLOCK_N=block_n),
                   label=label, num_warps=num_warps)


_FWD_SIG = {"X": "*{t}", "W": "*fp32", "Z": "*{t}", "Y": "*{t}", "RSTD": "*fp32",
            "M": "i32", "D": "i32", "N": "i32", "G": "i32", "eps": "fp32"}
_BWD_SIG = {"X": "*{t}", "W": "*fp32", "Z": "*{t}", "RSTD": "*fp32", "DY": "*{t}", "DX": "*{t}",
            "DZ": "*{t}", "DW_PART": "*fp32", "M": "i32", "D": "i32", "N": "i32", "G": "i32"}
_CONST = ("HAS_W", "HAS_Z", "NORM_BEFORE_GATE", "IS_F64", "BLOCK_M", "BLOCK_N")


def _sig(base, t):
    s = {k: v.format(t=t) for k, v in base.items()}
    s.update({c: "constexpr" for c in _CONST})
    return s


AOT_SPECS = [
    _spec(kernel, _sig(sig, t), f"{t}-{label}", n, HAS_W=hw, HAS_Z=hz, NORM_BEFORE_GATE=nbg, IS_F64=False)
    for kernel, sig in (("_rmsnorm_fwd_kernel", _FWD_SIG), ("_rmsnorm_bwd_kernel", _BWD_SIG))
    for t, label, hw, hz, nbg, n in (
        ("fp32", "D1024", True, False, True, 1024),
        ("bf16", "gated-D2048", True, True, True, 2048),
        ("bf16", "mamba2-group-D128", True, True, False, 128),
        ("fp32", "D8192", True, False, True, 8192),
    )
]
