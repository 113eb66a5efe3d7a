"""Winograd convolution F(m x m, 3 x 3), m in {2, 4}, NCHW, float32 / float64 (Lavin & Gray 2016).

The output is cut into m x m tiles; tile (n, ti, tj) reads the alpha x alpha input patch
d = x[n, c, ti*m - pad_h + [0, alpha), tj*m - pad_w + [0, alpha)] (zero outside), alpha = m + 2:

  forward      Y_tile[k] = A^T [ sum_c U[k,c] . V[c] ] A,   U = G g[k,c] G^T,  V = B^T d B
               (. is elementwise: alpha^2 independent GEMMs [K x C] x [C x tiles] per group)
  grad-input   a stride-1 convolution of gy with the rotated, channel-transposed filter and padding
               2 - pad (negative = crop), run through the forward path
  grad-weight  the adjoint: dg[k,c] = G^T [ sum_{n,tiles} (A dY_tile[k] A^T) . V[c] ] G
               (alpha^2 GEMMs [K x tiles] x [tiles x C]);  grad-bias gb[k] = sum_{n,p,q} gy[n,k,p,q]

The matrices come from the table pyconv.problem.WINOGRAD (points 0, 1, -1 for F(2x2); 0, 1, -1, 1/2, -2
for F(4x4)), as do the C++ and CUDA ones; one implementation serves both m: the kernels take B^T, G,
A^T as arguments.

Layout and loop order: filters are transformed once per call into U[g][xi][kb][c][4] (xi = position in
the alpha x alpha tile, K zero-padded to 4 rows: tile_update's A operand). Tasks are (group, block
of NB tiles); the block's input is transformed, vectorized across its tiles, into V[xi][c][NB] (about
128 KiB per position, so it stays in L2 while every K block reuses it), tile_update multiplies U[xi]
by V[xi] into M[k][xi][NB] (k-major, so the output transform reads contiguous rows), and the output
transform (+ bias) writes Y, clipped at P x Q. Tasks are split into contiguous runs, one prange
iteration per run, each with its own V / M scratch.
grad-weight does the same per block with Z[xi][t][k] = A dY A^T and V^T, accumulating into one dU per
run; the runs' dU are summed in run order (deterministic for a given thread count).
tile_update (kernels/cpu/_tile.py) suits these products better than the GEMM's dot3x3: the reductions
run over channels (as few as 64), too short to amortize dot3x3's horizontal sums (measured 1.2-1.7x).

Transforms skip zero coefficients, as the C++ version does at compile time (so 0 * Inf never enters a
sum that would not have it); fastmath is 'contract' only, so NaN / Inf propagate as without it.
"""
import numpy as np
from numba import njit, prange

from pyconv._errors import PyConvError
from pyconv.problem import WINOGRAD, winograd_tile, winograd_unsupported

from . import conv_direct
from ._tile import FM, tile_update

MR = 4  # rows of tile_update


def _float64(rows):
    return np.array([[float(v) for v in row] for row in rows], dtype=np.float64)


# m -> (B^T, G, A^T) as float64, from the one table (exact fractions, each rounded once).
MATRICES = {m: (_float64(t.BT), _float64(t.G), _float64(t.AT)) for m, t in WINOGRAD.items()}


@njit(cache=True, fastmath=FM)
def sandwich(L, R, X, tmp, Y, n):
    """Y[i*J + j, :n] = sum_{a,b} L[i,a] R[j,b] X[a*B + b, :n]   (Y = L X R^T on each of n columns).
    L: (I, A), R: (J, B), X: (A*B, >=n), tmp: (I*B, >=n), Y: (I*J, >=n). Zero coefficients skipped."""
    I, A = L.shape
    J, B = R.shape
    for i in range(I):
        for b in range(B):
            t = tmp[i * B + b]
            for q in range(n):
                t[q] = 0
            for a in range(A):
                c = L[i, a]
                if c == 0:
                    continue
                xr = X[a * B + b]
                for q in range(n):
                    t[q] += c * xr[q]
    for i in range(I):
        for j in range(J):
            y = Y[i * J + j]
            for q in range(n):
                y[q] = 0
            for b in range(B):
                c = R[j, b]
                if c == 0:
                    continue
                t = tmp[i * B + b]
                for q in range(n):
                    y[q] += c * t[q]


@njit(parallel=True, cache=True)
def transform_filters(w, Gm, transposed, Gr, Cin, Kout, U):
    """U[g, xi, kb, c, kk] = (G f G^T)[xi] of filter (k = kb*4 + kk, c) of group g, 0 for k >= Kout.
    transposed: grad-input's filter (output channel = forward input channel, rotated 180 degrees);
    w flat, forward layout [Gr*Kfwd, Cfwd, 3, 3]."""
    A = Gm.shape[0]
    nkb = U.shape[2]
    for gk in prange(Gr * nkb * MR):
        g = gk // (nkb * MR)
        k = gk % (nkb * MR)
        kb = k // MR
        kk = k % MR
        # all Cin filters of output channel k at once: the transform is vectorized across c
        f = np.zeros((9, Cin), dtype=U.dtype)
        tmp = np.empty((A * 3, Cin), dtype=U.dtype)
        u = np.empty((A * A, Cin), dtype=U.dtype)
        if k < Kout:
            for c in range(Cin):
                for rs in range(9):
                    if transposed:
                        f[rs, c] = w[((g * Cin + c) * Kout + k) * 9 + (8 - rs)]
                    else:
                        f[rs, c] = w[((g * Kout + k) * Cin + c) * 9 + rs]
        sandwich(Gm, Gm, f, tmp, u, Cin)
        for xi in range(A * A):
            for c in range(Cin):
                U[g, xi, kb, c, kk] = u[xi, c]


@njit(cache=True, fastmath=FM)
def transform_input_block(x, BT, m, g, t0, NB, Gr, Cin, H, W, th, tw, tiles, pad_h, pad_w, d, tmp, v, V):
    """V[xi, c, j] = (B^T d B)[xi] of tile t0 + j (0 past the last tile) for the channels of group g.
    d, tmp, v: (A*A, NB) scratch; tiles are the vectorized (last) axis."""
    A = BT.shape[0]
    for c in range(Cin):
        for j in range(NB):
            t = t0 + j
            if t >= tiles:
                for e in range(A * A):
                    d[e, j] = 0
                continue
            n = t // (th * tw)
            y0 = (t // tw) % th * m - pad_h
            x0 = t % tw * m - pad_w
            base = ((n * Gr + g) * Cin + c) * H * W
            if y0 >= 0 and x0 >= 0 and y0 + A <= H and x0 + A <= W:
                for i in range(A):
                    row = base + (y0 + i) * W + x0
                    for jj in range(A):
                        d[i * A + jj, j] = x[row + jj]
            else:
                for i in range(A):
                    yy = y0 + i
                    for jj in range(A):
                        xx = x0 + jj
                        if 0 <= yy < H and 0 <= xx < W:
                            d[i * A + jj, j] = x[base + yy * W + xx]
                        else:
                            d[i * A + jj, j] = 0
        sandwich(BT, BT, d, tmp, v, NB)  # into contiguous rows (vectorized), then one copy
        for xi in range(A * A):
            V[xi, c, :] = v[xi]


@njit(cache=True, fastmath=FM)
def transform_output_block(Mb, AT, m, bias, has_bias, g, t0, NB, Gr, Kout, P, Q, th, tw, tiles, tmp, o, y):
    """y tiles t0 .. t0+NB of group g = A^T M A (+ bias), clipped at P x Q. Mb: (Kpad, A*A, NB)."""
    for k in range(Kout):
        sandwich(AT, AT, Mb[k], tmp, o, NB)
        bv = bias[g * Kout + k] if has_bias else y.dtype.type(0)
        for j in range(NB):
            t = t0 + j
            if t >= tiles:
                break
            n = t // (th * tw)
            p0 = (t // tw) % th * m
            q0 = t % tw * m
            yk = ((n * Gr + g) * Kout + k) * P * Q
            for i in range(min(m, P - p0)):
                for jj in range(min(m, Q - q0)):
                    y[yk + (p0 + i) * Q + q0 + jj] = o[i * m + jj, j] + bv


@njit(parallel=True, cache=True, fastmath=FM)
def conv_blocks(x, U, BT, AT, m, bias, has_bias, y, N, Gr, Cin, Kout, H, W, P, Q, pad_h, pad_w, NB, runs):
    A = m + 2
    th = (P + m - 1) // m
    tw = (Q + m - 1) // m
    tiles = N * th * tw
    nblocks = (tiles + NB - 1) // NB
    ntasks = Gr * nblocks
    nkb = U.shape[2]
    taps = np.arange(Cin) * NB  # row c of V[xi]
    for run in prange(runs):
        V = np.empty((A * A, Cin, NB), dtype=y.dtype)
        Vf = V.reshape(-1)
        Mb = np.empty((nkb * MR, A * A, NB), dtype=y.dtype)
        acc = np.empty((MR, NB), dtype=y.dtype)  # contiguous rows: tile_update's loops vectorize
        d = np.empty((A * A, NB), dtype=y.dtype)
        tmp = np.empty((A * A, NB), dtype=y.dtype)
        o = np.empty((m * m, NB), dtype=y.dtype)
        v = np.empty((A * A, NB), dtype=y.dtype)
        for task in range(run * ntasks // runs, (run + 1) * ntasks // runs):
            g = task // nblocks
            t0 = task % nblocks * NB
            transform_input_block(x, BT, m, g, t0, NB, Gr, Cin, H, W, th, tw, tiles, pad_h, pad_w, d, tmp, v, V)
            for xi in range(A * A):
                for kb in range(nkb):
                    acc[:, :] = 0
                    tile_update(acc, Vf, xi * Cin * NB, taps, U[g, xi, kb], Cin, NB)
                    for i in range(MR):
                        Mb[kb * MR + i, xi, :] = acc[i]
            transform_output_block(Mb, AT, m, bias, has_bias, g, t0, NB, Gr, Kout, P, Q, th, tw, tiles, tmp, o, y)


@njit(cache=True, fastmath=FM)
def transform_grad_output_block(gy, AT, m, g, t0, NB, Gr, Kout, P, Q, th, tw, tiles, dy, tmp, z, Zp):
    """Zp[xi, kb, j, kk] = (A dY A^T)[xi] of channel k = kb*4 + kk over tile t0 + j (0 outside P x Q,
    past the last tile and for k >= Kout): the packed left operand of grad-weight's GEMM.
    AT here is A^T; the sandwich uses its transpose A (alpha x m)."""
    A = AT.shape[1]
    Am = AT.T
    for k in range(Zp.shape[1] * MR):
        kb = k // MR
        kk = k % MR
        if k >= Kout:
            for xi in range(A * A):
                for j in range(NB):
                    Zp[xi, kb, j, kk] = 0
            continue
        for j in range(NB):
            t = t0 + j
            if t >= tiles:
                for e in range(m * m):
                    dy[e, j] = 0
                continue
            n = t // (th * tw)
            p0 = (t // tw) % th * m
            q0 = t % tw * m
            gk = ((n * Gr + g) * Kout + k) * P * Q
            for i in range(m):
                for jj in range(m):
                    p = p0 + i
                    q = q0 + jj
                    dy[i * m + jj, j] = gy[gk + p * Q + q] if p < P and q < Q else gy.dtype.type(0)
        sandwich(Am, Am, dy, tmp, z, NB)
        for xi in range(A * A):
            for j in range(NB):
                Zp[xi, kb, j, kk] = z[xi, j]


@njit(parallel=True, cache=True, fastmath=FM)
def weight_grad_blocks(x, gy, BT, AT, m, N, Gr, Cin, Kout, H, W, P, Q, pad_h, pad_w, NB, runs, dU):
    """dU[run, g, xi, kb, kk, c] = sum over the run's tiles of Z[xi, k, t] V[xi, c, t], k = kb*4 + kk."""
    A = m + 2
    th = (P + m - 1) // m
    tw = (Q + m - 1) // m
    tiles = N * th * tw
    nblocks = (tiles + NB - 1) // NB
    ntasks = Gr * nblocks
    nkb = dU.shape[3]
    taps = np.arange(NB) * Cin
    for run in prange(runs):
        dUr = dU[run]
        dUr[:] = 0
        V = np.empty((A * A, Cin, NB), dtype=x.dtype)
        Vt = np.empty((A * A, NB, Cin), dtype=x.dtype)
        Vtf = Vt.reshape(-1)
        Zp = np.empty((A * A, nkb, NB, MR), dtype=x.dtype)
        d = np.empty((A * A, NB), dtype=x.dtype)
        tmp = np.empty((A * A, NB), dtype=x.dtype)
        z = np.empty((A * A, NB), dtype=x.dtype)
        v = np.empty((A * A, NB), dtype=x.dtype)
        for task in range(run * ntasks // runs, (run + 1) * ntasks // runs):
            g = task // nblocks
            t0 = task % nblocks * NB
            transform_input_block(x, BT, m, g, t0, NB, Gr, Cin, H, W, th, tw, tiles, pad_h, pad_w, d, tmp, v, V)
            for xi in range(A * A):
                for c in range(Cin):
                    for j in range(NB):
                        Vt[xi, j, c] = V[xi, c, j]
            transform_grad_output_block(gy, AT, m, g, t0, NB, Gr, Kout, P, Q, th, tw, tiles, d, tmp, z, Zp)
            for xi in range(A * A):
                for kb in range(nkb):
                    tile_update(dUr[g, xi, kb], Vtf, xi * NB * Cin, taps, Zp[xi, kb], NB, Cin)


@njit(parallel=True, cache=True)
def weight_grad_finish(dU, Gm, Gr, Cin, Kout, gw):
    """gw[g, k, c] = G^T (sum over runs of dU[run, g, :, k, c], in run order) G."""
    runs = dU.shape[0]
    A = Gm.shape[0]
    Gt = Gm.T.copy()
    for gk in prange(Gr * Kout):
        g = gk // Kout
        k = gk % Kout
        du = np.empty((A * A, 1), dtype=gw.dtype)
        tmp = np.empty((3 * A, 1), dtype=gw.dtype)
        f = np.empty((9, 1), dtype=gw.dtype)
        for c in range(Cin):
            for xi in range(A * A):
                s = gw.dtype.type(0)
                for r in range(runs):
                    s += dU[r, g, xi, k // MR, k % MR, c]
                du[xi, 0] = s
            sandwich(Gt, Gt, du, tmp, f, 1)
            for rs in range(9):
                gw[((g * Kout + k) * Cin + c) * 9 + rs] = f[rs, 0]


# ----------------------------------------------------------------------------- Python side ---

def tile_of(algo, s):
    """Output tile m of an algo name on this shape. The caller (the backend's can_run) has checked the
    shape; this check guards memory: the kernels index the filter as 3x3."""
    why = winograd_unsupported(s)
    if why:
        raise PyConvError(f"algo={algo!r} cannot run this convolution: {why}")
    return winograd_tile(algo, s)


def _threads():
    import numba

    return numba.get_num_threads()


def _block_tiles(Cin, itemsize, tiles, G):
    """Tiles per block: V[xi] (Cin x NB) near 128 KiB; fewer when that leaves threads without a task."""
    NB = max(16, min(128, (128 * 1024) // max(1, Cin * itemsize)))
    NB -= NB % 16
    nthr = _threads()
    while NB > 16 and G * -(-tiles // NB) < nthr:
        NB //= 2
    return NB


def _conv(m, x, w, transposed, bias, y, N, G, Cin, Kout, H, W, P, Q, pad_h, pad_w):
    th, tw = -(-P // m), -(-Q // m)
    tiles = N * th * tw
    if tiles == 0 or Kout == 0:
        return
    BT, Gm, AT = (a.astype(y.dtype) for a in MATRICES[m])
    A = m + 2
    nkb = -(-Kout // MR)
    U = np.empty((G, A * A, nkb, Cin, MR), dtype=y.dtype)
    transform_filters(w, Gm, transposed, G, Cin, Kout, U)
    NB = _block_tiles(Cin, y.itemsize, tiles, G)
    ntasks = G * -(-tiles // NB)
    runs = max(1, min(ntasks, 4 * _threads()))
    has_bias = bias is not None
    b = bias if has_bias else np.zeros(1, dtype=y.dtype)
    conv_blocks(x, U, BT, AT, m, b, has_bias, y, N, G, Cin, Kout, H, W, P, Q, pad_h, pad_w, NB, runs)


def forward(x, w, b, y, s, algo="winograd"):
    m = tile_of(algo, s)
    if s.N == 0 or s.K == 0 or s.P == 0 or s.Q == 0:
        return
    _conv(m, x, w, False, b, y, s.N, s.G, s.C // s.G, s.K // s.G, s.H, s.W, s.P, s.Q,
          s.pad_h, s.pad_w)


def backward_input(gy, w, gx, s, algo="winograd"):
    """The stride-1 convolution of gy (Kg -> Cg channels per group, P x Q -> H x W, padding 2 - pad)."""
    m = tile_of(algo, s)
    if s.N == 0 or s.C == 0 or s.H == 0 or s.W == 0:
        return
    _conv(m, gy, w, True, None, gx, s.N, s.G, s.K // s.G, s.C // s.G, s.P, s.Q, s.H, s.W,
          2 - s.pad_h, 2 - s.pad_w)


def backward_weight(x, gy, gw, gb, s, algo="winograd"):
    m = tile_of(algo, s)
    if gb is not None:
        conv_direct.bias_grad(gy, s.N, s.K, s.P * s.Q, gb)
    if gw is None:
        return
    Cg, Kg = s.C // s.G, s.K // s.G
    th, tw = -(-s.P // m), -(-s.Q // m)
    tiles = s.N * th * tw
    if tiles == 0 or Cg == 0 or Kg == 0:
        gw[:] = 0
        return
    BT, Gm, AT = (a.astype(gw.dtype) for a in MATRICES[m])
    A = m + 2
    nkb = -(-Kg // MR)
    NB = _block_tiles(Cg, gw.itemsize, tiles, s.G)
    ntasks = s.G * -(-tiles // NB)
    runs = max(1, min(ntasks, _threads()))
    dU = np.empty((runs, s.G, A * A, nkb, MR, Cg), dtype=gw.dtype)
    weight_grad_blocks(x, gy, BT, AT, m, s.N, s.G, Cg, Kg, s.H, s.W, s.P, s.Q, s.pad_h, s.pad_w, NB, runs, dU)
    weight_grad_finish(dU, Gm, s.G, Cg, Kg, gw)
