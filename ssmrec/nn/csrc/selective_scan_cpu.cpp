// Fused selective scan for CPU: Mamba-1 (A per channel x state) and Mamba-2 (scalar A per head).
//
// Layout is channel-last, as the blocks produce it: u, delta, z, out are (b, L, channels) with unit
// stride over channels (batch/time strides are free, so split/chunk views need no copy); B and C are
// (b, L, g, n). Work is split over (batch row, run of channel blocks); a block is W consecutive
// channels of one B/C group, processed as W SIMD lanes so the state h[n][W] stays in L1 and no
// (b, L, d, n) tensor is ever materialised. Training saves only the state entering every kChunk
// steps; backward recomputes one chunk at a time from those checkpoints.
// Threads: at::parallel_for is OpenMP code inlined here, so this file must be built with -fopenmp
// (see fused_scan.py), or every kernel runs on one thread.
//
// "head" = channels per delta/A/D entry: 1 for Mamba-1, headdim for Mamba-2 (delta, A, D per head).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#if defined(__AVX__)
#include <immintrin.h>
#endif


#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

// Lanes = one SIMD register of channels: 512 bits (16 floats / 8 doubles) where the compiler targets
// AVX-512, else 256 bits. GCC/Clang vector extensions make the SIMD explicit: auto-vectorisation
// picks narrower vectors on some tunings (e.g. znver1) and gives up on loops that call exp.
#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#else
constexpr int kVecBytes = 32;
#endif
template <typename T> struct Lanes {
  typedef T vec __attribute__((vector_size(kVecBytes)));
  static constexpr int W = kVecBytes / sizeof(T);
};
typedef int32_t vint __attribute__((vector_size(kVecBytes)));

// 2^x on a vector of floats with no libm call: x = k + f with k the nearest integer and f in [-0.5, 0.5],
// 2^f by a degree-5 polynomial (near-minimax relative fit), times 2^k. Max relative error 1.9e-7
// (~1.6 ulp; tested) for x in [-126, 127.49]. x below -126 gives 2^-126 ~ 1.2e-38 (never a denormal:
// denormal operands are slow), x above overflows to +inf as exp does. Under AVX-512, k comes from one
// rounding instruction and 2^k is applied by vscalefps (9 vector ops); elsewhere by the 1.5*2^23
// trick, which leaves k + 127 in the low mantissa bits so that (bits << 23) is the float 2^k, and
// saturates at 2^127.49 instead of overflowing (12 ops). The scan calls it on x = delta * (A * log2 e)
// with the scale folded into A once per block.
inline Lanes<float>::vec vexp2(Lanes<float>::vec x) {
  typedef Lanes<float>::vec V;
  const V lo = V{} - 126.0f;
#if defined(__AVX512F__)
  x = _mm512_max_ps(x, lo);
  const V k = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const V f = x - k;
#else
  const V hi = V{} + 127.49f, magic = V{} + (12582912.0f + 127.0f);
#if defined(__AVX__)
  x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);  // the generic select below compiles to compare + blend
#else
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
#endif
  const V kf = x + magic;  // low mantissa bits: k + 127 (the biased exponent of 2^k)
  const V f = x - (kf - magic);
#endif
  V p = V{} + 1.326472731307149e-3f;
  p = p * f + 9.671512991189957e-3f;
  p = p * f + 5.550733581185341e-2f;
  p = p * f + 2.402224242687225e-1f;
  p = p * f + 6.931470036506653e-1f;
  p = p * f + 1.0f;
#if defined(__AVX512F__)
  return _mm512_scalef_ps(p, k);
#else
  return p * (V)((vint)kf << 23);
#endif
}
inline Lanes<double>::vec vexp2(Lanes<double>::vec x) {  // float64 is for gradcheck: exactness first
  for (int j = 0; j < Lanes<double>::W; ++j) x[j] = std::exp2(x[j]);
  return x;
}
constexpr double kLog2e = 1.4426950408889634;
inline Lanes<float>::vec vexp(Lanes<float>::vec x) { return vexp2(x * static_cast<float>(kLog2e)); }
inline Lanes<double>::vec vexp(Lanes<double>::vec x) {
  for (int j = 0; j < Lanes<double>::W; ++j) x[j] = std::exp(x[j]);
  return x;
}
template <typename T> inline T softplus_fn(T x) { return x > T(20) ? x : std::log1p(std::exp(x)); }
template <typename T> inline T sigmoid(T x) { return T(1) / (T(1) + std::exp(-x)); }

constexpr int64_t kChunk = 16;  // time steps per backward recompute chunk

template <typename T>
struct Scan {
  typedef typename Lanes<T>::vec V;
  static constexpr int W = Lanes<T>::W;
  // inputs
  const T *u, *delta, *A, *B, *C, *D, *z, *bias, *init;
  int64_t u_sb, u_st, dl_sb, dl_st, z_sb, z_st, bc_sb, bc_st;  // C shares B's strides
  int64_t b, L, d, n, g, head;
  bool softplus, scalar_A;
  // block list: channel start and lane count, every block inside one group
  std::vector<int64_t> blk_c0;
  std::vector<int> blk_nv;
  int64_t nsplit = 1;

  int64_t group_of(int64_t c) const { return c / (d / g); }

  void build_blocks() {
    const int64_t dg = d / g;
    for (int64_t gi = 0; gi < g; ++gi)
      for (int64_t c0 = gi * dg; c0 < (gi + 1) * dg; c0 += W) {
        blk_c0.push_back(c0);
        blk_nv.push_back(static_cast<int>(std::min<int64_t>(W, (gi + 1) * dg - c0)));
      }
    // enough tasks for the thread pool even at batch 1; splits of a row share dB/dC partials
    const int64_t want = 4 * std::max<int64_t>(1, at::get_num_threads());
    nsplit = std::min<int64_t>(static_cast<int64_t>(blk_c0.size()), std::max<int64_t>(1, (want + b - 1) / b));
  }

  // Partial blocks (nv < W lanes) load zeros and store nothing past nv: one masked instruction under
  // AVX-512, else lane loops. The full-width path returns straight from a memcpy: building v in
  // memory for the lane loop kept it on the stack on both paths, and the round trip stalled on
  // store forwarding (~4x on the conv). Masked moves are kept off that path: store-to-load
  // forwarding from a masked store is slow on this CPU (the scan forward ran 3x slower).
  static V load(const T* p, int nv) {
    V v;
    if (__builtin_expect(nv == W, 1)) {
      std::memcpy(&v, p, sizeof(V));
      return v;
    }
#if defined(__AVX512F__)
    if constexpr (std::is_same<T, float>::value) v = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << nv) - 1u), p);
    else v = _mm512_maskz_loadu_pd(static_cast<__mmask8>((1u << nv) - 1u), p);
#else
    v = V{};
    for (int j = 0; j < nv; ++j) v[j] = p[j];
#endif
    return v;
  }
  static void store(T* p, V v, int nv) {
    if (__builtin_expect(nv == W, 1)) {
      std::memcpy(p, &v, sizeof(V));
      return;
    }
#if defined(__AVX512F__)
    if constexpr (std::is_same<T, float>::value) _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << nv) - 1u), v);
    else _mm512_mask_storeu_pd(p, static_cast<__mmask8>((1u << nv) - 1u), v);
#else
    for (int j = 0; j < nv; ++j) p[j] = v[j];
#endif
  }

  // lane inputs at time t for the block at c0 (invalid lanes are zero => exact no-ops);
  // raw = pre-softplus delta (needed by backward). Blocks inside one head (Mamba-2, headdim a
  // multiple of W) read and transform delta once per step and broadcast it.
  void load_lanes(int64_t bi, int64_t t, int64_t c0, int nv, V& uu, V& dd, V& raw) const {
    uu = load(u + bi * u_sb + t * u_st + c0, nv);
    const T* dp = delta + bi * dl_sb + t * dl_st;
    if (head == 1 && !bias && !softplus) { dd = raw = load(dp + c0, nv); return; }
    const int64_t h0 = c0 / head, h1 = (c0 + nv - 1) / head;
    if (h0 == h1) {
      const T x = dp[h0] + (bias ? bias[h0] : T(0));
      const T y = softplus ? softplus_fn<T>(x) : x;
      raw = dd = V{};
      for (int j = 0; j < nv; ++j) { raw[j] = x; dd[j] = y; }
      return;
    }
    dd = raw = V{};
    for (int j = 0; j < nv; ++j) {
      const int64_t hidx = (c0 + j) / head;
      const T x = dp[hidx] + (bias ? bias[hidx] : T(0));
      raw[j] = x;
      dd[j] = softplus ? softplus_fn<T>(x) : x;
    }
  }

  // per-block constants: A as n vectors (vector A) or 1 vector (scalar A), D per lane
  void load_consts(int64_t c0, int nv, V* Ab, V* A2, V& Dl) const {
    Dl = V{};
    const int na = scalar_A ? 1 : static_cast<int>(n);
    for (int i = 0; i < na; ++i) Ab[i] = V{};
    for (int j = 0; j < nv; ++j) {
      const int64_t c = c0 + j;
      if (D) Dl[j] = D[c / head];
      if (scalar_A) Ab[0][j] = A[c / head];
      else for (int64_t i = 0; i < n; ++i) Ab[i][j] = A[c * n + i];
    }
    for (int i = 0; i < na; ++i) A2[i] = Ab[i] * T(kLog2e);  // decay = 2^(delta * A2)
  }

  void load_init(int64_t bi, int64_t c0, int nv, V* h) const {
    for (int64_t i = 0; i < n; ++i) {
      h[i] = V{};
      if (init) for (int j = 0; j < nv; ++j) h[i][j] = init[(bi * d + c0 + j) * n + i];
    }
  }

  // h <- a*h + dd*uu*B_t for all lanes; returns y = <C_t, h> (pre-D, pre-gate). a_out (optional)
  // receives the decay factors: n vectors (vector A) or 1 (scalar A), for backward.
  // Sums over the state index use 4 partial accumulators: one chain of n dependent FMAs per step
  // would otherwise bound the loop by FMA latency rather than throughput.
  // h_out may alias h_in (forward) or be the next row of a recompute buffer (backward).
  inline V step(const T* Brow, const T* Crow, const V* A2, V dd, V uu, const V* h_in, V* h_out, V* a_out) const {
    const V du = dd * uu;
    V y[4] = {};
    const V a0 = scalar_A ? vexp2(dd * A2[0]) : V{};
    if (scalar_A && a_out) a_out[0] = a0;
    int64_t i = 0;
    auto upd = [&](int64_t i, V& acc) {
      V a = a0;
      if (!scalar_A) {
        a = vexp2(dd * A2[i]);
        if (a_out) a_out[i] = a;
      }
      const V hn = a * h_in[i] + du * Brow[i];
      h_out[i] = hn;
      acc += hn * Crow[i];
    };
    for (; i + 4 <= n; i += 4) { upd(i, y[0]); upd(i + 1, y[1]); upd(i + 2, y[2]); upd(i + 3, y[3]); }
    for (; i < n; ++i) upd(i, y[0]);
    return (y[0] + y[1]) + (y[2] + y[3]);
  }

  static V vsigmoid(V x) { return T(1) / (T(1) + vexp(-x)); }

  template <typename F>
  void for_tasks(F&& fn) const {
    const int64_t nblk = static_cast<int64_t>(blk_c0.size());
    const int64_t per = (nblk + nsplit - 1) / nsplit;
    at::parallel_for(0, b * nsplit, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t task = lo; task < hi; ++task) {
        const int64_t bi = task / nsplit, s = task % nsplit;
        fn(bi, s, s * per, std::min(nblk, (s + 1) * per));
      }
    });
  }

  // Training saves the state entering every chunk of kChunk steps (ckpt, an opaque (b, nchunks,
  // blocks, n, W) buffer), so backward recomputes one chunk at a time into buffers of a fixed,
  // L1-sized length instead of a whole (L, n, W) history per block that grows with L.
  int64_t nchunks() const { return (L + kChunk - 1) / kChunk; }
  int64_t nblocks() const { return static_cast<int64_t>(blk_c0.size()); }
  V* ckpt_at(T* ckpt, int64_t bi, int64_t ci, int64_t k) const {
    return reinterpret_cast<V*>(ckpt) + ((bi * nchunks() + ci) * nblocks() + k) * n;
  }

  void forward(T* out, T* last, T* ckpt) const {
    for_tasks([&](int64_t bi, int64_t, int64_t k0, int64_t k1) {
      std::vector<V> h(n), Ab(scalar_A ? 1 : n), A2(Ab.size());
      V uu, dd, raw, Dl;
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t c0 = blk_c0[k];
        const int nv = blk_nv[k];
        const int64_t grp = group_of(c0);
        load_consts(c0, nv, Ab.data(), A2.data(), Dl);
        load_init(bi, c0, nv, h.data());
        for (int64_t t = 0; t < L; ++t) {
          if (ckpt && t % kChunk == 0) std::memcpy(ckpt_at(ckpt, bi, t / kChunk, k), h.data(), n * sizeof(V));
          load_lanes(bi, t, c0, nv, uu, dd, raw);
          const int64_t bc = bi * bc_sb + t * bc_st + grp * n;
          V y = step(B + bc, C + bc, A2.data(), dd, uu, h.data(), h.data(), nullptr) + Dl * uu;
          if (z) { const V zt = load(z + bi * z_sb + t * z_st + c0, nv); y *= zt * vsigmoid(zt); }
          store(out + (bi * L + t) * d + c0, y, nv);
        }
        if (last)
          for (int64_t i = 0; i < n; ++i)
            for (int j = 0; j < nv; ++j) last[(bi * d + c0 + j) * n + i] = h[i][j];
      }
    });
  }

  // Gradients. du, ddelta (per channel), dz: (b, L, d); dBp, dCp: (b, nsplit, L, g, n) partials;
  // dA_p: (b, d, n) or (b, d); dD_p, dbias_p: (b, d); dinit: (b, d, n). ckpt: from forward.
  // Chunks run last to first, and inside a chunk every block of the task: dB/dC then accumulate
  // over the task's blocks in chunk-sized (L1) buffers, reduced across lanes once per chunk, while
  // each block carries its dLoss/dh and parameter gradients from chunk to chunk.
  // Backward tasks take rows_per_group() batch rows each and keep one dA/dD/dbias partial per group:
  // per-row partials cost a (b, d, n) write and reduction per call, which at short L (a training batch
  // of prefixes) took longer than the scan itself. The grouping depends on b only, not on threads.
  int64_t rows_per_group() const { return std::max<int64_t>(1, std::min<int64_t>(8, b / 32)); }
  int64_t ngroups() const { return (b + rows_per_group() - 1) / rows_per_group(); }

  void backward(const T* dout, const T* ckpt, T* du_o, T* ddelta_o, T* dz_o, T* dBp, T* dCp, T* dA_p,
                T* dD_p, T* dbias_p, T* dinit) const {
    const int64_t nblk = nblocks(), per = (nblk + nsplit - 1) / nsplit, R = rows_per_group();
    at::parallel_for(0, ngroups() * nsplit, 1, [&](int64_t lo, int64_t hi) {
     for (int64_t task = lo; task < hi; ++task) {
      const int64_t gi = task / nsplit, s = task % nsplit;
      const int64_t k0 = s * per, k1 = std::min(nblk, (s + 1) * per);
      const int64_t an = scalar_A ? 1 : n;  // decay vectors per step
      const int64_t nb = k1 - k0;
      // one chunk of one block: recomputed states (row 0 = the checkpoint), decays, lane inputs
      std::vector<V> Hs((kChunk + 1) * n), As(kChunk * an), Us(kChunk), Ds(kChunk), Rs(kChunk), Ys(z ? kChunk : 0);
      std::vector<V> Gs(kChunk), LU(kChunk), DL(kChunk);  // dLoss/dy through the gate; sums over states
      // per block of the task, carried across chunks
      std::vector<V> Ab(nb * an), A2(nb * an), Dl(nb), dh(nb * n), dAl(nb * an), dDl(nb), dbl(nb);
      for (int64_t k = k0; k < k1; ++k) load_consts(blk_c0[k], blk_nv[k], &Ab[(k - k0) * an], &A2[(k - k0) * an], Dl[k - k0]);
      // dB/dC of the current chunk, lane-wise, for the group being accumulated
      std::vector<V> dBacc(kChunk * n), dCacc(kChunk * n);
      for (int64_t kb = 0; kb < nb; ++kb) {
        for (int64_t i = 0; i < an; ++i) dAl[kb * an + i] = V{};
        dDl[kb] = dbl[kb] = V{};
      }
      for (int64_t bi = gi * R; bi < std::min(b, (gi + 1) * R); ++bi) {
      T* dBb = dBp + (bi * nsplit + s) * L * g * n;
      T* dCb = dCp + (bi * nsplit + s) * L * g * n;
      for (int64_t ci = nchunks() - 1; ci >= 0; --ci) {
        const int64_t t0 = ci * kChunk, t1 = std::min(L, t0 + kChunk);
        int64_t acc_grp = -1;
        auto flush = [&]() {
          if (acc_grp < 0) return;
          for (int64_t t = t0; t < t1; ++t) {
            add_lane_sums(&dBacc[(t - t0) * n], dBb + (t * g + acc_grp) * n);
            add_lane_sums(&dCacc[(t - t0) * n], dCb + (t * g + acc_grp) * n);
          }
        };
        for (int64_t k = k0; k < k1; ++k) {
          const int64_t kb = k - k0;
          const int64_t c0 = blk_c0[k];
          const int nv = blk_nv[k];
          const int64_t grp = group_of(c0);
          if (grp != acc_grp) { flush(); acc_grp = grp; }
          const V* Abk = &Ab[kb * an];
          const V* A2k = &A2[kb * an];
          V* dhk = &dh[kb * n];
          V* dAk = &dAl[kb * an];
          if (ci == nchunks() - 1)
            for (int64_t i = 0; i < n; ++i) dhk[i] = V{};
          std::memcpy(Hs.data(), ckpt_at(const_cast<T*>(ckpt), bi, ci, k), n * sizeof(V));
          // 1. recompute the chunk's forward from its checkpoint: Hs row r+1 = state after t0+r
          for (int64_t t = t0; t < t1; ++t) {
            const int64_t r = t - t0;
            load_lanes(bi, t, c0, nv, Us[r], Ds[r], Rs[r]);
            const int64_t bc = bi * bc_sb + t * bc_st + grp * n;
            V y = step(B + bc, C + bc, A2k, Ds[r], Us[r], &Hs[r * n], &Hs[(r + 1) * n], &As[r * an]);
            if (z) Ys[r] = y + Dl[kb] * Us[r];
          }
          // 2. reverse sweep over the chunk, in three passes: (a) output gradients through the gate;
          // (b) the adjoint recurrence, which for a per-state A runs over tiles of 4 states with
          // their dLoss/dh and dA in registers across the chunk's steps (the sums over states go to
          // per-step accumulators); (c) du, ddelta from those sums.
          V dD_acc = dDl[kb], db_acc = dbl[kb];
          for (int64_t t = t0; t < t1; ++t) {
            const int64_t r = t - t0, o = (bi * L + t) * d + c0;
            V gy = load(dout + o, nv);
            if (z) {
              const V zt = load(z + bi * z_sb + t * z_st + c0, nv);
              const V sg = vsigmoid(zt);
              store(dz_o + o, gy * Ys[r] * sg * (T(1) + zt * (T(1) - sg)), nv);
              gy *= zt * sg;
            }
            dD_acc += gy * Us[r];
            Gs[r] = gy;
            LU[r] = DL[r] = V{};
          }
          if (scalar_A) {  // one decay per lane: dLoss/d(delta*A) = a * sum_i dh_i h_{t-1,i}
            for (int64_t t = t1 - 1; t >= t0; --t) {
              const int64_t r = t - t0, bc = bi * bc_sb + t * bc_st + grp * n;
              const T* Brow = B + bc;
              const T* Crow = C + bc;
              const V* Ht = &Hs[(r + 1) * n];
              const V* Hp = &Hs[r * n];
              V* dBa = &dBacc[r * n];
              V* dCa = &dCacc[r * n];
              const V a = As[r], gy = Gs[r], du = Ds[r] * Us[r];
              V dlu{}, s_dh_hp{};
              for (int64_t i = 0; i < n; ++i) {
                const V dhv = dhk[i] + gy * Crow[i];  // dLoss/dh_t
                dCa[i] += gy * Ht[i];
                dBa[i] += dhv * du;
                dlu += dhv * Brow[i];
                s_dh_hp += dhv * Hp[i];
                dhk[i] = dhv * a;  // carried to t-1
              }
              const V dap = s_dh_hp * a;
              LU[r] = dlu;
              DL[r] = dap * Abk[0];
              dAk[0] += dap * Ds[r];
            }
          } else {
            auto tile = [&](auto tile_size, int64_t i0) {
              constexpr int TI = decltype(tile_size)::value;
              V dh_r[TI], dA_r[TI], A_r[TI];
              for (int q = 0; q < TI; ++q) { dh_r[q] = dhk[i0 + q]; dA_r[q] = dAk[i0 + q]; A_r[q] = Abk[i0 + q]; }
              for (int64_t t = t1 - 1; t >= t0; --t) {
                const int64_t r = t - t0, bc = bi * bc_sb + t * bc_st + grp * n + i0;
                const T* Brow = B + bc;
                const T* Crow = C + bc;
                const V* At = &As[r * n + i0];
                const V* Ht = &Hs[(r + 1) * n + i0];
                const V* Hp = &Hs[r * n + i0];
                V* dBa = &dBacc[r * n + i0];
                V* dCa = &dCacc[r * n + i0];
                const V gy = Gs[r], dd = Ds[r], du = dd * Us[r];
                V lu{}, dl{};
                for (int q = 0; q < TI; ++q) {
                  const V a = At[q];
                  const V dhv = dh_r[q] + gy * Crow[q];  // dLoss/dh_t
                  dCa[q] += gy * Ht[q];
                  dBa[q] += dhv * du;
                  lu += dhv * Brow[q];
                  const V dap = dhv * Hp[q] * a;  // dLoss/d(delta*A_i)
                  dl += dap * A_r[q];
                  dA_r[q] += dap * dd;
                  dh_r[q] = dhv * a;  // carried to t-1
                }
                LU[r] += lu;
                DL[r] += dl;
              }
              for (int q = 0; q < TI; ++q) { dhk[i0 + q] = dh_r[q]; dAk[i0 + q] = dA_r[q]; }
            };
            int64_t i = 0;
            for (; i + 4 <= n; i += 4) tile(std::integral_constant<int, 4>{}, i);
            for (; i < n; ++i) tile(std::integral_constant<int, 1>{}, i);
          }
          for (int64_t t = t0; t < t1; ++t) {
            const int64_t r = t - t0, o = (bi * L + t) * d + c0;
            store(du_o + o, Gs[r] * Dl[kb] + LU[r] * Ds[r], nv);
            V g_dl = DL[r] + LU[r] * Us[r];
            if (softplus)
              for (int j = 0; j < W; ++j) g_dl[j] *= sigmoid(Rs[r][j]);
            store(ddelta_o + o, g_dl, nv);
            db_acc += g_dl;
          }
          dDl[kb] = dD_acc;
          dbl[kb] = db_acc;
        }
        flush();
      }
      if (dinit)  // dLoss/d(initial state) of this row
        for (int64_t k = k0; k < k1; ++k) {
          const int64_t kb = k - k0, c0 = blk_c0[k];
          for (int j = 0; j < blk_nv[k]; ++j)
            for (int64_t i = 0; i < n; ++i) dinit[(bi * d + c0 + j) * n + i] = dh[kb * n + i][j];
        }
      }  // rows of the group
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t kb = k - k0, c0 = blk_c0[k];
        for (int j = 0; j < blk_nv[k]; ++j) {
          const int64_t c = c0 + j;
          dD_p[gi * d + c] = dDl[kb][j];
          dbias_p[gi * d + c] = dbl[kb][j];
          if (scalar_A) dA_p[gi * d + c] = dAl[kb][j];
          else for (int64_t i = 0; i < n; ++i) dA_p[(gi * d + c) * n + i] = dAl[kb * n + i][j];
        }
      }
     }  // tasks
    });
  }

  // Lane sums of W vectors at once: out lane i = sum of the lanes of v[i]. Each level pairs vectors
  // and halves the partial sums per row (two shuffles and one add per pair), so W sums cost about
  // 3W vector ops instead of W^2 scalar adds.
  template <int G, size_t... I>
  static V fold(V a, V b, std::index_sequence<I...>) {
    return __builtin_shufflevector(a, b, (int(I) / (G / 2)) * G + int(I) % (G / 2)...) +
           __builtin_shufflevector(a, b, (int(I) / (G / 2)) * G + G / 2 + int(I) % (G / 2)...);
  }
  template <int G>  // G vectors holding G partial sums per row -> G / 2 vectors
  static void fold_level(V* v) {
    for (int j = 0; j < G / 2; ++j) v[j] = fold<G>(v[2 * j], v[2 * j + 1], std::make_index_sequence<W>{});
    if constexpr (G > 2) fold_level<G / 2>(v);
  }
  // out[i] += lane sum of acc[i] for i < n, then zero acc
  void add_lane_sums(V* acc, T* out) const {
    V tmp[W];
    for (int64_t i0 = 0; i0 < n; i0 += W) {
      const int cnt = static_cast<int>(std::min<int64_t>(W, n - i0));
      for (int j = 0; j < W; ++j) {
        tmp[j] = j < cnt ? acc[i0 + j] : V{};
        if (j < cnt) acc[i0 + j] = V{};
      }
      fold_level<W>(tmp);
      store(out + i0, load(out + i0, cnt) + tmp[0], cnt);
    }
  }
};

// Causal depthwise conv1d + SiLU, channel-last: y[b,t,c] = silu(bias[c] + sum_k w[c,k] x[b,t-K+1+k,c])
// (zero history before t = 0). Replaces conv1d on a transposed copy + silu + their backward passes.
// Work is split into (batch row, run of kRows time steps) tasks that sweep whole rows of channels,
// so reads and writes stream through memory (a task per channel block would stride over rows).
template <typename T>
struct CausalConv {
  typedef typename Lanes<T>::vec V;
  static constexpr int W = Lanes<T>::W;
  static constexpr int64_t kRows = 16;
  const T *x, *w, *bias;
  int64_t x_sb, x_st, b, L, C, K;
  std::vector<V> wk, bv;  // per channel block: K weight vectors, one bias vector

  int64_t nblk() const { return (C + W - 1) / W; }
  int nv(int64_t blk) const { return static_cast<int>(std::min<int64_t>(W, C - blk * W)); }
  void prepare() {
    wk.assign(nblk() * K, V{});
    bv.assign(nblk(), V{});
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t k = 0; k < K; ++k) wk[(c / W) * K + k][c % W] = w[c * K + k];
      if (bias) bv[c / W][c % W] = bias[c];
    }
  }
  // conv input (before SiLU) at step t for one channel block; KC > 0 is K known at compile time
  // (Mamba's d_conv 4), so the tap loop unrolls and the weights stay in registers
  template <int KC>
  V pre(const T* xb, int64_t t, const V* wv, V acc, int n) const {
    const int64_t Kk = KC > 0 ? KC : K;
    for (int64_t k = std::max<int64_t>(0, Kk - 1 - t); k < Kk; ++k)
      acc += wv[k] * Scan<T>::load(xb + (t - Kk + 1 + k) * x_st, n);
    return acc;
  }
  // tasks: (batch row, kRows steps), each sweeping every channel block, blocks outer and steps inner so
  // a block's K taps are re-read from L1
  template <typename F>
  void for_row_runs(F&& fn) const {
    const int64_t runs = (L + kRows - 1) / kRows;
    at::parallel_for(0, b * runs, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t task = lo; task < hi; ++task) {
        const int64_t bi = task / runs, t0 = (task % runs) * kRows;
        fn(bi, t0, std::min(L, t0 + kRows));
      }
    });
  }
  template <int KC>
  void forward_k(T* y) const {
    for_row_runs([&](int64_t bi, int64_t t0, int64_t t1) {
      for (int64_t blk = 0; blk < nblk(); ++blk) {
        const int n = nv(blk);
        const T* xb = x + bi * x_sb + blk * W;
        V wv[KC > 0 ? KC : 1];
        const V* w_use = KC > 0 ? wv : &wk[blk * K];
        if (KC > 0) for (int k = 0; k < KC; ++k) wv[k] = wk[blk * K + k];
        for (int64_t t = t0; t < t1; ++t) {
          const V p = pre<KC>(xb, t, w_use, bv[blk], n);
          Scan<T>::store(y + (bi * L + t) * C + blk * W, p * Scan<T>::vsigmoid(p), n);
        }
      }
    });
  }
  void forward(T* y) const { K == 4 ? forward_k<4>(y) : forward_k<0>(y); }
  // dx (b, L, C); dw_p (threads, C, K) and db_p (threads, C) zero-initialised per-thread partials
  template <int KC>
  void backward_k(const T* dy, T* dx, T* dw_p, T* db_p) const {
    for_row_runs([&](int64_t bi, int64_t t0, int64_t t1) {
      const int64_t Kk = KC > 0 ? KC : K, te = std::min(L, t1 + Kk - 1);  // dx[t] needs dpre up to t + K - 1
      V dpre[kRows + 8];  // te - t0 <= kRows + K - 1
      std::vector<V> dpre_big(KC > 0 ? 0 : te - t0);
      V* dp = KC > 0 ? dpre : dpre_big.data();
      T* dwt = dw_p + at::get_thread_num() * C * Kk;
      T* dbt = db_p + at::get_thread_num() * C;
      for (int64_t blk = 0; blk < nblk(); ++blk) {
        const int n = nv(blk);
        const T* xb = x + bi * x_sb + blk * W;
        V wv[KC > 0 ? KC : 1], dwv[KC > 0 ? KC : 1];
        std::vector<V> dw_big(KC > 0 ? 0 : Kk);
        V* dw_use = KC > 0 ? dwv : dw_big.data();
        const V* w_use = KC > 0 ? wv : &wk[blk * K];
        for (int64_t k = 0; k < (KC > 0 ? KC : 0); ++k) wv[k] = wk[blk * K + k];
        for (int64_t k = 0; k < Kk; ++k) dw_use[k] = V{};
        V dbv{};
        for (int64_t t = t0; t < te; ++t) {
          const V p = pre<KC>(xb, t, w_use, bv[blk], n);
          const V sg = Scan<T>::vsigmoid(p);
          const V g = Scan<T>::load(dy + (bi * L + t) * C + blk * W, n) * sg * (T(1) + p * (T(1) - sg));
          dp[t - t0] = g;
          if (t >= t1) continue;  // halo rows: their dw/db belong to the next run
          dbv += g;
          for (int64_t k = std::max<int64_t>(0, Kk - 1 - t); k < Kk; ++k)
            dw_use[k] += g * Scan<T>::load(xb + (t - Kk + 1 + k) * x_st, n);
        }
        for (int64_t s = t0; s < t1; ++s) {
          V acc{};
          for (int64_t k = 0; k < Kk; ++k) {
            const int64_t t = s + Kk - 1 - k;
            if (t < te) acc += w_use[k] * dp[t - t0];
          }
          Scan<T>::store(dx + (bi * L + s) * C + blk * W, acc, n);
        }
        for (int j = 0; j < n; ++j) {
          const int64_t c = blk * W + j;
          dbt[c] += dbv[j];
          for (int64_t k = 0; k < Kk; ++k) dwt[c * Kk + k] += dw_use[k][j];
        }
      }
    });
  }
  void backward(const T* dy, T* dx, T* dw_p, T* db_p) const {
    K == 4 ? backward_k<4>(dy, dx, dw_p, db_p) : backward_k<0>(dy, dx, dw_p, db_p);
  }
};

// Gated RMSNorm (Mamba-2, norm_before_gate=False): y = g * rsqrt(mean_group(g^2) + eps) * w with
// g = x * silu(z), per row and group; fwd + bwd in one pass per row instead of ~10 elementwise ops.
template <typename T>
struct GatedRMSNorm {
  typedef typename Lanes<T>::vec V;
  static constexpr int W = Lanes<T>::W;
  const T *x, *z, *w;
  int64_t rows, d, group;
  T eps;

  template <typename F>
  void for_rows(F&& fn) const {
    const int64_t nchunk = std::min<int64_t>(rows, 4 * std::max<int64_t>(1, at::get_num_threads()));
    const int64_t per = (rows + nchunk - 1) / nchunk;
    at::parallel_for(0, nchunk, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t ch = lo; ch < hi; ++ch) fn(ch, ch * per, std::min(rows, (ch + 1) * per));
    });
  }
  // g for lanes [c, c+nv) of row r; sg = sigmoid(z)
  inline V gate(int64_t r, int64_t c, int nv, V& xv, V& zv, V& sg) const {
    xv = Scan<T>::load(x + r * d + c, nv);
    zv = Scan<T>::load(z + r * d + c, nv);
    sg = Scan<T>::vsigmoid(zv);
    return xv * zv * sg;
  }
  T inv_rms(int64_t r, int64_t g0) const {
    V acc{}, xv, zv, sg;
    for (int64_t c = g0; c < g0 + group; c += W) {
      const int nv = static_cast<int>(std::min<int64_t>(W, g0 + group - c));
      const V gv = gate(r, c, nv, xv, zv, sg);
      acc += gv * gv;
    }
    T ss = 0;
    for (int j = 0; j < W; ++j) ss += acc[j];
    return T(1) / std::sqrt(ss / group + eps);
  }
  void forward(T* y) const {
    for_rows([&](int64_t, int64_t r0, int64_t r1) {
      V xv, zv, sg;
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t g0 = 0; g0 < d; g0 += group) {
          const T rs = inv_rms(r, g0);
          for (int64_t c = g0; c < g0 + group; c += W) {
            const int nv = static_cast<int>(std::min<int64_t>(W, g0 + group - c));
            Scan<T>::store(y + r * d + c, gate(r, c, nv, xv, zv, sg) * rs * Scan<T>::load(w + c, nv), nv);
          }
        }
    });
  }
  // dx, dz (rows, d); dw_p (nchunk, d) partials
  int64_t nchunks() const { return std::min<int64_t>(rows, 4 * std::max<int64_t>(1, at::get_num_threads())); }
  void backward(const T* dy, T* dx, T* dz, T* dw_p) const {
    for_rows([&](int64_t ch, int64_t r0, int64_t r1) {
      T* dwc = dw_p + ch * d;
      std::fill(dwc, dwc + d, T(0));
      V xv, zv, sg;
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t g0 = 0; g0 < d; g0 += group) {
          const T rs = inv_rms(r, g0);
          V acc{};  // sum(dy * w * g)
          for (int64_t c = g0; c < g0 + group; c += W) {
            const int nv = static_cast<int>(std::min<int64_t>(W, g0 + group - c));
            acc += Scan<T>::load(dy + r * d + c, nv) * Scan<T>::load(w + c, nv) * gate(r, c, nv, xv, zv, sg);
          }
          T dot = 0;
          for (int j = 0; j < W; ++j) dot += acc[j];
          const T k = dot * rs * rs * rs / group;
          for (int64_t c = g0; c < g0 + group; c += W) {
            const int nv = static_cast<int>(std::min<int64_t>(W, g0 + group - c));
            const V gv = gate(r, c, nv, xv, zv, sg);
            const V dyv = Scan<T>::load(dy + r * d + c, nv);
            const V dg = dyv * Scan<T>::load(w + c, nv) * rs - gv * k;
            Scan<T>::store(dwc + c, Scan<T>::load(dwc + c, nv) + dyv * gv * rs, nv);
            Scan<T>::store(dx + r * d + c, dg * zv * sg, nv);
            Scan<T>::store(dz + r * d + c, dg * xv * sg * (T(1) + zv * (T(1) - sg)), nv);
          }
        }
    });
  }
};

template <typename T>
GatedRMSNorm<T> make_norm(const at::Tensor& x, const at::Tensor& z, const at::Tensor& w, int64_t group, double eps) {
  TORCH_CHECK(x.is_contiguous() && z.is_contiguous() && w.is_contiguous() && x.sizes() == z.sizes(),
              "x, z must be contiguous and of one shape");
  TORCH_CHECK(x.scalar_type() == z.scalar_type() && w.scalar_type() == x.scalar_type(), "dtype mismatch");
  GatedRMSNorm<T> nrm{};
  nrm.x = x.data_ptr<T>(); nrm.z = z.data_ptr<T>(); nrm.w = w.data_ptr<T>();
  nrm.d = x.size(-1); nrm.rows = x.numel() / std::max<int64_t>(1, nrm.d); nrm.group = group; nrm.eps = static_cast<T>(eps);
  TORCH_CHECK(w.numel() == nrm.d && group > 0 && nrm.d % group == 0, "weight must be (d,), d a multiple of group");
  return nrm;
}

at::Tensor gated_rmsnorm_fwd(const at::Tensor& x, const at::Tensor& z, const at::Tensor& w, int64_t group, double eps) {
  auto y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ssmrec_norm_fwd", [&] {
    make_norm<scalar_t>(x, z, w, group, eps).forward(y.data_ptr<scalar_t>());
  });
  return y;
}

std::vector<at::Tensor> gated_rmsnorm_bwd(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& z,
                                          const at::Tensor& w, int64_t group, double eps) {
  TORCH_CHECK(dy.is_contiguous() && dy.sizes() == x.sizes(), "dy must be contiguous, shaped like x");
  auto dx = at::empty_like(x), dz = at::empty_like(z);
  at::Tensor dw;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ssmrec_norm_bwd", [&] {
    auto nrm = make_norm<scalar_t>(x, z, w, group, eps);
    auto dw_p = at::empty({nrm.nchunks(), nrm.d}, x.options());
    nrm.backward(dy.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(), dz.data_ptr<scalar_t>(), dw_p.data_ptr<scalar_t>());
    dw = dw_p.sum(0);
  });
  return {dx, dz, dw};
}

template <typename T>
CausalConv<T> make_conv(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 3 && (x.stride(2) == 1 || x.size(2) == 1), "x must be (b, L, C) with unit channel stride");
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous() && w.size(0) == x.size(2), "w must be (C, K) contiguous");
  TORCH_CHECK(w.scalar_type() == x.scalar_type() && (!bias || bias->scalar_type() == x.scalar_type()), "dtype mismatch");
  CausalConv<T> c{};
  c.x = x.data_ptr<T>(); c.w = w.data_ptr<T>(); c.bias = bias ? bias->data_ptr<T>() : nullptr;
  c.x_sb = x.stride(0); c.x_st = x.stride(1); c.b = x.size(0); c.L = x.size(1); c.C = x.size(2); c.K = w.size(1);
  c.prepare();
  return c;
}

at::Tensor conv_silu_fwd(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias) {
  auto y = at::empty({x.size(0), x.size(1), x.size(2)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ssmrec_conv_fwd", [&] {
    make_conv<scalar_t>(x, w, bias).forward(y.data_ptr<scalar_t>());
  });
  return y;
}

std::vector<at::Tensor> conv_silu_bwd(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w,
                                      const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(dy.is_contiguous(), "dy must be contiguous");
  auto dx = at::empty({x.size(0), x.size(1), x.size(2)}, x.options());
  auto dw_p = at::zeros({at::get_num_threads(), w.size(0), w.size(1)}, x.options());
  auto db_p = at::zeros({at::get_num_threads(), w.size(0)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ssmrec_conv_bwd", [&] {
    make_conv<scalar_t>(x, w, bias).backward(dy.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(),
                                             dw_p.data_ptr<scalar_t>(), db_p.data_ptr<scalar_t>());
  });
  return {dx, dw_p.sum(0), db_p.sum(0)};
}

void check_last_unit(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() >= 1 && (t.stride(-1) == 1 || t.size(-1) == 1), name, " must have unit stride in its last dimension");
}

template <typename T>
Scan<T> make_scan(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                  const at::Tensor& C, const c10::optional<at::Tensor>& D, const c10::optional<at::Tensor>& z,
                  const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& init,
                  bool softplus, int64_t head) {
  TORCH_CHECK(u.dim() == 3 && delta.dim() == 3 && B.dim() == 4 && C.dim() == 4, "bad ranks");
  for (auto* p : {&u, &delta, &A, &B, &C}) TORCH_CHECK(p->scalar_type() == u.scalar_type(), "dtype mismatch");
  check_last_unit(u, "u");
  check_last_unit(delta, "delta");
  TORCH_CHECK(B.stride(3) == 1 && (B.size(2) == 1 || B.stride(2) == B.size(3)), "B must be contiguous over (g, n)");
  TORCH_CHECK(C.strides() == B.strides() && C.sizes() == B.sizes(), "C must have B's shape and strides");
  Scan<T> s{};
  s.b = u.size(0); s.L = u.size(1); s.d = u.size(2); s.g = B.size(2); s.n = B.size(3); s.head = head;
  TORCH_CHECK(s.d % head == 0 && delta.size(2) == s.d / head, "delta must have d/head channels");
  TORCH_CHECK(s.d % s.g == 0, "channels must be a multiple of groups");
  s.scalar_A = A.dim() == 1;
  TORCH_CHECK(A.is_contiguous() && (s.scalar_A ? A.size(0) == s.d / head : (A.size(0) == s.d && A.size(1) == s.n)),
              "A must be (d, n) or (d/head,)");
  s.u = u.data_ptr<T>(); s.delta = delta.data_ptr<T>(); s.A = A.data_ptr<T>();
  s.B = B.data_ptr<T>(); s.C = C.data_ptr<T>();
  s.u_sb = u.stride(0); s.u_st = u.stride(1); s.dl_sb = delta.stride(0); s.dl_st = delta.stride(1);
  s.bc_sb = B.stride(0); s.bc_st = B.stride(1);
  s.D = D ? D->data_ptr<T>() : nullptr;
  if (z) { check_last_unit(*z, "z"); s.z = z->data_ptr<T>(); s.z_sb = z->stride(0); s.z_st = z->stride(1); }
  s.bias = bias ? bias->data_ptr<T>() : nullptr;
  if (init) TORCH_CHECK(init->is_contiguous() && init->numel() == s.b * s.d * s.n, "init must be (b, d, n)");
  s.init = init ? init->data_ptr<T>() : nullptr;
  s.softplus = softplus;
  s.build_blocks();
  return s;
}

std::vector<at::Tensor> scan_fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                 const at::Tensor& B, const at::Tensor& C, const c10::optional<at::Tensor>& D,
                                 const c10::optional<at::Tensor>& z, const c10::optional<at::Tensor>& bias,
                                 const c10::optional<at::Tensor>& init, bool softplus, int64_t head,
                                 bool save_ckpt, bool want_last) {
  auto out = at::empty({u.size(0), u.size(1), u.size(2)}, u.options());
  auto last = want_last ? at::empty({u.size(0), u.size(2), B.size(3)}, u.options()) : at::empty({0}, u.options());
  at::Tensor ckpt = at::empty({0}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "ssmrec_scan_fwd", [&] {
    auto s = make_scan<scalar_t>(u, delta, A, B, C, D, z, bias, init, softplus, head);
    if (save_ckpt) ckpt = at::empty({s.b, s.nchunks(), s.nblocks(), s.n, Lanes<scalar_t>::W}, u.options());
    s.forward(out.data_ptr<scalar_t>(), want_last ? last.data_ptr<scalar_t>() : nullptr,
              save_ckpt ? ckpt.data_ptr<scalar_t>() : nullptr);
  });
  return {out, last, ckpt};
}

std::vector<at::Tensor> scan_bwd(const at::Tensor& dout, const at::Tensor& ckpt, const at::Tensor& u, const at::Tensor& delta,
                                 const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                                 const c10::optional<at::Tensor>& D, const c10::optional<at::Tensor>& z,
                                 const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& init,
                                 bool softplus, int64_t head) {
  TORCH_CHECK(dout.is_contiguous(), "dout must be contiguous");
  std::vector<at::Tensor> res;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "ssmrec_scan_bwd", [&] {
    auto s = make_scan<scalar_t>(u, delta, A, B, C, D, z, bias, init, softplus, head);
    TORCH_CHECK(ckpt.is_contiguous() && ckpt.numel() == s.b * s.nchunks() * s.nblocks() * s.n * Lanes<scalar_t>::W,
                "ckpt must be the checkpoint buffer scan_fwd(save_ckpt=True) returned for these inputs");
    auto o = u.options();
    auto du = at::empty({s.b, s.L, s.d}, o), ddelta = at::empty({s.b, s.L, s.d}, o);
    auto dz = z ? at::empty({s.b, s.L, s.d}, o) : at::empty({0}, o);
    auto dBp = at::zeros({s.b, s.nsplit, s.L, s.g, s.n}, o), dCp = at::zeros({s.b, s.nsplit, s.L, s.g, s.n}, o);
    const int64_t G = s.ngroups();
    auto dA_p = s.scalar_A ? at::empty({G, s.d}, o) : at::empty({G, s.d, s.n}, o);
    auto dD_p = at::empty({G, s.d}, o), dbias_p = at::empty({G, s.d}, o);
    auto dinit = init ? at::empty({s.b, s.d, s.n}, o) : at::empty({0}, o);
    s.backward(dout.data_ptr<scalar_t>(), ckpt.data_ptr<scalar_t>(), du.data_ptr<scalar_t>(), ddelta.data_ptr<scalar_t>(),
               z ? dz.data_ptr<scalar_t>() : nullptr, dBp.data_ptr<scalar_t>(), dCp.data_ptr<scalar_t>(),
               dA_p.data_ptr<scalar_t>(), dD_p.data_ptr<scalar_t>(), dbias_p.data_ptr<scalar_t>(),
               init ? dinit.data_ptr<scalar_t>() : nullptr);
    res = {du, ddelta, dz, dBp.sum(1), dCp.sum(1), dA_p.sum(0), dD_p.sum(0), dbias_p.sum(0), dinit};
  });
  return res;
}

// For tests: the vector exp / exp2 the kernels use, applied to a float32 tensor, and how many threads
// an at::parallel_for in this extension actually ran on (1 if it was built without OpenMP).
at::Tensor vec_exp_f32(const at::Tensor& x, bool base2) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous(), "x must be contiguous float32");
  auto y = at::empty_like(x);
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  typedef Lanes<float>::vec V;
  constexpr int W = Lanes<float>::W;
  for (int64_t i = 0; i < x.numel(); i += W) {
    const int nv = static_cast<int>(std::min<int64_t>(W, x.numel() - i));
    const V v = Scan<float>::load(xp + i, nv);
    Scan<float>::store(yp + i, base2 ? vexp2(v) : vexp(v), nv);
  }
  return y;
}

int64_t parallel_threads(int64_t n) {
  std::vector<char> seen(std::max(1, at::get_num_threads()) + 1, 0);
  at::parallel_for(0, n, 1, [&](int64_t, int64_t) { seen[std::min<int64_t>(at::get_thread_num(), seen.size() - 1)] = 1; });
  int64_t count = 0;
  for (char c : seen) count += c;
  return count;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("scan_fwd", &scan_fwd, "fused selective scan forward (CPU)");
  m.def("scan_bwd", &scan_bwd, "fused selective scan backward (CPU)");
  m.def("conv_silu_fwd", &conv_silu_fwd, "causal depthwise conv1d + SiLU forward, channel-last (CPU)");
  m.def("gated_rmsnorm_fwd", &gated_rmsnorm_fwd, "RMSNorm(x * silu(z)) * w per group, forward (CPU)");
  m.def("gated_rmsnorm_bwd", &gated_rmsnorm_bwd, "RMSNorm(x * silu(z)) * w per group, backward (CPU)");
  m.def("conv_silu_bwd", &conv_silu_bwd, "causal depthwise conv1d + SiLU backward, channel-last (CPU)");
  m.def("vec_exp_f32", &vec_exp_f32, "the kernels' vector exp (base2=False) or exp2, float32 (tests)");
  m.def("parallel_threads", &parallel_threads, "threads one at::parallel_for over n tasks ran on (tests)");
}
