"""Direct convolution, NCHW, float32 / float64, any stride, padding, dilation and group count.

  forward      y[n,k,p,q]  = b[k] + sum_{c,r,s} w[k,c,r,s] * x[n, gC+c, p*sh - ph + r*dh, q*sw - pw + s*dw]
  grad-input   gx = conv_stride1( zero_insert(gy, sh, sw), rot180(w) with k and c swapped )
               (the transposed convolution, run through the forward path)
  grad-weight  gw[k,c,r,s] = sum_{n,p,q} gy[n,k,p,q] * x[n, gC+c, p*sh - ph + r*dh, q*sw - pw + s*dw]
  grad-bias    gb[k] = sum_{n,p,q} gy[n,k,p,q]

Each image is first copied into a zero-padded, stride-deinterleaved buffer, so the inner loops
read contiguous runs with no bounds tests whatever the stride, padding or dilation: padded pixel
(i, j) = (p*sh + r*dh, q*sw + s*dw) lives at [c][i % sh][j % sw][i // sh][j // sw] (one plane of Hl x Wl
per stride phase), so output (p, q) of tap (c, r, s) sits at taps[c, r, s] + p*Wl + q. Consecutive
output rows are then consecutive rows of a plane for any stride: one parallel task computes a block
of 4 output channels x RB output rows as one contiguous run (tile_update), reducing over the
flattened (c, r, s) taps; the Wl - Q columns between two output rows are computed and dropped.
"""
import numpy as np
from numba import njit, prange

from ._tile import FM, FM_REDUCE, tile_update

KB = 4  # output channels per task (the rows of tile_update)


@njit(parallel=True, cache=True, fastmath=FM)
def pack_rows(src, channels, Hsrc, Wsrc, ins_h, ins_w, top, left, Hb, rph, Hl, cph, Wl, dst):
    """dst[c, i % rph, j % cph, i // rph, j // cph] = src[c, (i-top)/ins_h, (j-left)/ins_w] where exact and in
    range, else 0 (zero insertion for ins > 1, padding for the rest), for padded rows i < Hb. src, dst flat;
    the plane rows past Hb are never written (dst starts zeroed)."""
    HW = Hl * Wl
    plane = rph * cph * HW
    for cr in prange(channels * Hb):
        c = cr // Hb
        i = cr - c * Hb
        out = c * plane + (i % rph) * cph * HW + (i // rph) * Wl
        for ph in range(cph):
            for t in range(Wl):
                dst[out + ph * HW + t] = 0
        si = i - top
        if si < 0 or si % ins_h != 0 or si // ins_h >= Hsrc:
            continue
        inp = (c * Hsrc + si // ins_h) * Wsrc
        for w in range(Wsrc):
            j = left + w * ins_w
            if j < 0:
                continue
            if j >= cph * Wl:
                break
            dst[out + (j % cph) * HW + j // cph] = src[inp + w]


@njit(parallel=True, cache=True)
def pack_filters(w, G, Kout, Cin, R, S, transposed, dst):
    """dst[g, kb, (c*R + r)*S + s, kk] = filter tap of output channel kb*KB+kk (0 beyond Kout).
    transposed: the grad-input filter (out = forward input channel, in = forward output channel,
    rotated by 180 degrees). w flat (forward layout [G*Kfwd, Cfwd, R, S])."""
    nkb = (Kout + KB - 1) // KB
    RS = R * S
    for gb in prange(G * nkb):
        g = gb // nkb
        kb = gb - g * nkb
        for c in range(Cin):
            for rs in range(RS):
                for kk in range(KB):
                    ko = kb * KB + kk
                    v = w[0] * 0
                    if ko < Kout:
                        if transposed:
                            v = w[((g * Cin + c) * Kout + ko) * RS + (RS - 1 - rs)]
                        else:
                            v = w[((g * Kout + ko) * Cin + c) * RS + rs]
                    dst[gb, c * RS + rs, kk] = v


@njit(parallel=True, cache=True, fastmath=FM)
def conv_rows(xp, plane, Wl, wp, taps, bias, has_bias, y, G, Cin, Kout, P, Q, RB):
    """y[g*Kout + k, p, :] = bias + sum over taps, for every (g, k block, block of RB output rows): the RB
    rows are one contiguous run of the packed planes, computed as a single long vector loop; the Wl - Q
    columns between two output rows are computed and dropped. xp packed planes, y flat."""
    nkb = (Kout + KB - 1) // KB
    npb = (P + RB - 1) // RB
    T = taps.shape[0]
    for t in prange(G * nkb * npb):
        # k block fastest: consecutive tasks of a thread reuse the same input rows from L2
        g = t // (nkb * npb)
        p0 = ((t // nkb) % npb) * RB
        kb = t % nkb
        rows = min(RB, P - p0)
        n = (rows - 1) * Wl + Q
        acc = np.zeros((KB, n), dtype=y.dtype)
        tile_update(acc, xp, g * Cin * plane + p0 * Wl, taps, wp[g * nkb + kb], T, n)
        for kk in range(min(KB, Kout - kb * KB)):
            k = g * Kout + kb * KB + kk
            bv = bias[k] if has_bias else y.dtype.type(0)
            for i in range(rows):
                out = (k * P + p0 + i) * Q
                for q in range(Q):
                    y[out + q] = acc[kk, i * Wl + q] + bv


@njit(cache=True)
def conv_taps(Cin, R, S, plane, Hl, Wl, dh, dw, rph, cph):
    """Offset of tap (c, r, s) inside a group's packed planes, relative to output (0, 0)."""
    taps = np.empty(Cin * R * S, dtype=np.int64)
    for c in range(Cin):
        for r in range(R):
            for s in range(S):
                i = r * dh
                j = s * dw
                taps[(c * R + r) * S + s] = (c * plane + ((i % rph) * cph + j % cph) * Hl * Wl + (i // rph) * Wl
                                             + j // cph)
    return taps


def _run(N, src, in_image, w, transposed, bias, dst, out_image, G, Cin, Kout, R, S, P, Q, dh, dw,
         Hsrc, Wsrc, ins_h, ins_w, top, left, geometry):
    """Image by image: pack the image, then the tiled kernel. geometry: (Hb, rph, Hl, cph, Wl)."""
    Hb, rph, Hl, cph, Wl = geometry
    plane = rph * cph * Hl * Wl
    nkb = (Kout + KB - 1) // KB
    wp = np.empty((G * nkb, Cin * R * S, KB), dtype=dst.dtype)
    pack_filters(w, G, Kout, Cin, R, S, transposed, wp)
    taps = conv_taps(Cin, R, S, plane, Hl, Wl, dh, dw, rph, cph)
    xp = np.zeros(G * Cin * plane, dtype=dst.dtype)
    has_bias = bias is not None
    b = bias if has_bias else np.zeros(1, dtype=dst.dtype)
    # rows per task: a run of about 256 outputs
    RB = max(1, min(P, 256 // Wl))
    for n in range(N):
        pack_rows(src[n * in_image:(n + 1) * in_image], G * Cin, Hsrc, Wsrc, ins_h, ins_w, top, left, Hb, rph, Hl,
                  cph, Wl, xp)
        conv_rows(xp, plane, Wl, wp, taps, b, has_bias, dst[n * out_image:(n + 1) * out_image], G, Cin, Kout,
                  P, Q, RB)


def forward_pack_geometry(s):
    """(Hb, rph, Hl, cph, Wl) of the forward problem's padded, deinterleaved planes: Hb padded rows
    used, rph x cph stride phases of Hl x Wl each."""
    Hb = (s.P - 1) * s.stride_h + s.dil_h * (s.R - 1) + 1
    span = (s.Q - 1) * s.stride_w + s.dil_w * (s.S - 1) + 1
    return Hb, s.stride_h, -(-Hb // s.stride_h), s.stride_w, -(-span // s.stride_w)


def forward(x, w, b, y, s):
    """x, w, b, y: flat contiguous numpy arrays; s: ConvShape."""
    if s.N == 0 or s.K == 0 or s.P == 0 or s.Q == 0:
        return
    _run(s.N, x, s.C * s.H * s.W, w, False, b, y, s.K * s.P * s.Q, s.G, s.C // s.G, s.K // s.G, s.R, s.S,
         s.P, s.Q, s.dil_h, s.dil_w, s.H, s.W, 1, 1, s.pad_h, s.pad_w, forward_pack_geometry(s))


def backward_input(gy, w, gx, s):
    if s.N == 0 or s.C == 0 or s.H == 0 or s.W == 0:
        return
    if s.K == 0:
        gx[:] = 0
        return
    Hb = s.H + s.dil_h * (s.R - 1)
    _run(s.N, gy, s.K * s.P * s.Q, w, True, None, gx, s.C * s.H * s.W, s.G, s.K // s.G, s.C // s.G, s.R, s.S,
         s.H, s.W, s.dil_h, s.dil_w, s.P, s.Q, s.stride_h, s.stride_w,
         s.dil_h * (s.R - 1) - s.pad_h, s.dil_w * (s.S - 1) - s.pad_w,
         (Hb, 1, Hb, 1, s.W + s.dil_w * (s.S - 1)))


@njit(parallel=True, cache=True, fastmath=FM_REDUCE)
def bias_grad(gy, N, K, PQ, gb):
    """gb[k] = sum_{n,p,q} gy[n,k,p,q], accumulated in float64: the grad-bias of every algorithm
    (im2col and winograd call it too), so its precision does not depend on the algorithm."""
    for k in prange(K):
        acc = np.float64(0)
        for n in range(N):
            o = (n * K + k) * PQ
            for i in range(PQ):
                acc += gy[o + i]
        gb[k] = acc


@njit(parallel=True, cache=True, fastmath=FM_REDUCE)
def weight_grad_image(xp, plane, Wl, gyn, gw, G, Cg, Kg, R, S, P, Q, roff, soff):
    """gw[k, c, r, s] += sum_{p,q} gy[k,p,q] * xp[c*plane + roff[r] + soff[s] + p*Wl + q] for one image,
    4 output channels at a time (one x load feeds 4 FMAs)."""
    nkb = (Kg + KB - 1) // KB
    PQ = P * Q
    RS = R * S
    for t in prange(G * nkb * Cg):
        g = t // (nkb * Cg)
        kb = (t // Cg) % nkb
        c = t % Cg
        k0 = kb * KB
        # tail channels repeat the last valid row; their sums are not stored
        g0 = (g * Kg + min(k0, Kg - 1)) * PQ
        g1 = (g * Kg + min(k0 + 1, Kg - 1)) * PQ
        g2 = (g * Kg + min(k0 + 2, Kg - 1)) * PQ
        g3 = (g * Kg + min(k0 + 3, Kg - 1)) * PQ
        xc = (g * Cg + c) * plane
        kvalid = min(KB, Kg - k0)
        for r in range(R):
            for s in range(S):
                a0 = gw.dtype.type(0)
                a1 = gw.dtype.type(0)
                a2 = gw.dtype.type(0)
                a3 = gw.dtype.type(0)
                for p in range(P):
                    xo = xc + roff[r] + soff[s] + p * Wl
                    po = p * Q
                    # slices, not xp[xo + q]: a signed offset costs a wraparound select per element
                    xr = xp[xo:xo + Q]
                    y0 = gyn[g0 + po:g0 + po + Q]
                    y1 = gyn[g1 + po:g1 + po + Q]
                    y2 = gyn[g2 + po:g2 + po + Q]
                    y3 = gyn[g3 + po:g3 + po + Q]
                    for q in range(Q):
                        xv = xr[q]
                        a0 += y0[q] * xv
                        a1 += y1[q] * xv
                        a2 += y2[q] * xv
                        a3 += y3[q] * xv
                base = ((g * Kg + k0) * Cg + c) * RS + r * S + s
                gw[base] += a0
                if kvalid > 1:
                    gw[base + Cg * RS] += a1
                if kvalid > 2:
                    gw[base + 2 * Cg * RS] += a2
                if kvalid > 3:
                    gw[base + 3 * Cg * RS] += a3


def backward_weight(x, gy, gw, gb, s):
    PQ = s.P * s.Q
    if gb is not None:
        bias_grad(gy, s.N, s.K, PQ, gb)
    if gw is None:
        return
    gw[:] = 0
    Cg, Kg = s.C // s.G, s.K // s.G
    if s.N == 0 or PQ == 0 or s.K == 0 or Cg == 0:
        return
    Hb, rph, Hl, cph, Wl = forward_pack_geometry(s)
    plane = rph * cph * Hl * Wl
    # the tap offsets of conv_taps, split into their row and column parts
    roff = np.array([((i * s.dil_h) % rph) * cph * Hl * Wl + (i * s.dil_h) // rph * Wl for i in range(s.R)],
                    dtype=np.int64)
    soff = np.array([((j * s.dil_w) % cph) * Hl * Wl + (j * s.dil_w) // cph for j in range(s.S)], dtype=np.int64)
    xp = np.zeros(s.C * plane, dtype=x.dtype)
    image = s.C * s.H * s.W
    for n in range(s.N):
        pack_rows(x[n * image:(n + 1) * image], s.C, s.H, s.W, 1, 1, s.pad_h, s.pad_w, Hb, rph, Hl, cph, Wl, xp)
        weight_grad_image(xp, plane, Wl, gy[n * s.K * PQ:(n + 1) * s.K * PQ], gw, s.G, Cg, Kg, s.R, s.S, s.P,
                          s.Q, roff, soff)
