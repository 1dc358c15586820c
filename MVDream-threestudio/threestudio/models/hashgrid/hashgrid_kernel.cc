// CPU hash-grid kernels for MindSpore ops.Custom(func_type="aot").
//
// Same semantics as the pure-ops backend (tcnn HashGrid): per level l, pos = x * scale[l] + 0.5,
// corner index = dense (sum c_d * stride[l][d], uint32) or hashed (XOR of uint32 c_d * prime_d),
// modulo size[l], plus offset[l]; trilinear (N-linear) weights.
//
// Inputs shared by all entry points:
//   x      float32 [N, D]        points in [0, 1]^D
//   params float32 [P]           table, entry e of the level at params[e * F + f]
//   meta   int64   [L, 3 + D]    (offset, size, hashed, stride_0..stride_{D-1}) per level
//   scale  float32 [L]
// hashgrid_fwd: -> out [N, L * F]
// hashgrid_bwd: + dout [N, L * F] -> dparams [P], dx [N, D]
//
// Work is split by level: a level's table slice (2^log2_hashmap_size entries at most, a few MB)
// stays in cache while a chunk of points streams by, and each level owns a disjoint slice of the
// gradient, so the scatter needs no atomics and sums in point order whatever the thread count
// (deterministic). Per-level results go through level-major buffers ([L][chunk][...]) and are
// then gathered per point, so no two threads ever write the same cache line of an output.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

constexpr uint32_t kPrimes[7] = {1u, 2654435761u, 805459861u, 3674653429u, 2097192037u, 1434869437u, 2165219737u};
constexpr int kMaxDims = 7;

struct Level {
  int64_t offset;
  uint32_t size, mask;  // mask = size - 1 when size is a power of two (then % size is & mask), else 0
  bool hashed;
  uint32_t mult[kMaxDims];  // prime (hashed) or dense stride per dim
  float scale;
};

std::vector<Level> read_levels(const int64_t* meta, const float* scale, int64_t L, int D) {
  std::vector<Level> levels(L);
  for (int64_t l = 0; l < L; ++l) {
    const int64_t* m = meta + l * (3 + D);
    Level& lv = levels[l];
    lv.offset = m[0];
    lv.size = static_cast<uint32_t>(m[1]);
    lv.mask = (lv.size & (lv.size - 1)) == 0 ? lv.size - 1 : 0;
    lv.hashed = m[2] != 0;
    for (int d = 0; d < D; ++d) lv.mult[d] = lv.hashed ? kPrimes[d] : static_cast<uint32_t>(m[3 + d]);
    lv.scale = scale[l];
  }
  return levels;
}

template <int D>
struct Corners {
  static constexpr int K = 1 << D;
  int64_t entry[K];   // table entry (offset included) of each corner
  float w[K];         // interpolation weight of each corner
  float a[D][2];      // per-dim weights: 1 - frac, frac
};

// Cell of point x on level lv: corner entries and weights. Corner k takes c_d + bit d of k.
template <int D>
inline void locate(const float* x, const Level& lv, Corners<D>* c) {
  uint32_t term[D][2];
  for (int d = 0; d < D; ++d) {
    const float pos = std::fma(lv.scale, x[d], 0.5f);
    const float fl = std::floor(pos);
    const uint32_t g = static_cast<uint32_t>(static_cast<int>(fl));
    const float frac = pos - fl;
    c->a[d][0] = 1.f - frac;
    c->a[d][1] = frac;
    term[d][0] = g * lv.mult[d];
    term[d][1] = (g + 1u) * lv.mult[d];
  }
  for (int k = 0; k < Corners<D>::K; ++k) {
    uint32_t index = term[0][k & 1];
    float w = c->a[0][k & 1];
    for (int d = 1; d < D; ++d) {
      const int bit = (k >> d) & 1;
      index = lv.hashed ? (index ^ term[d][bit]) : (index + term[d][bit]);
      w *= c->a[d][bit];
    }
    if (lv.mask) {
      index &= lv.mask;
    } else if (index >= lv.size) {
      index %= lv.size;
    }
    c->entry[k] = lv.offset + index;
    c->w[k] = w;
  }
}

// Features per level as a compile-time constant where it is small (FT > 0), else runtime F.
template <int FT>
struct Feat {
  static constexpr int get(int) { return FT; }
};
template <>
struct Feat<0> {
  static int get(int F) { return F; }
};

struct Args {
  int64_t N, L, P;
  int D, F;
  const float* x;
  const float* params;
  std::vector<Level> levels;
};

// Scratch buffer (left uninitialised: every element is written before it is read).
struct Scratch {
  std::unique_ptr<float[]> own;
  float* p;
  explicit Scratch(size_t n) : own(new float[n]), p(own.get()) {}
};

// Points per chunk of the level-major buffers (chunk * L * max(F, D) floats). Small enough that a
// level's slice (chunk * F floats, 128 KB) and the chunk's dout rows (2 MB at L * F = 32) stay in a
// core's L2 next to the table lines: on a 2-core Xeon (2 MB L2 per core), 1M points x 16 levels
// took 0.155 s forward and 0.38 s backward at 2^14, against 0.217 s and 0.57 s at 2^17.
constexpr int64_t kChunk = 1 << 14;
// Software pipeline: the corners of point i + ahead are located and prefetched while point i is
// accumulated, so the random table accesses of several points are in flight at once (distances
// measured best on a 2-core AMD EPYC; on a Xeon with 2^14-point chunks 12/8 and 5/15 were within
// noise of them).
constexpr int kAheadFwd = 8, kAheadBwd = 12;
constexpr int kRing = 16;  // power of two > the distances

// The shared loop of both passes. Points go in chunks [c0, c0 + n); for each chunk, the levels
// run in parallel (hashed, expensive ones first, so dynamic scheduling balances the threads):
// level_fn(l, c0, n) for each level, then, once all levels of the chunk are done,
// point_fn(i, c0) for each point of the chunk in parallel.
template <class LevelFn, class PointFn>
void chunked_levels(int64_t N, int64_t L, int64_t chunk, LevelFn level_fn, PointFn point_fn) {
  for (int64_t c0 = 0; c0 < N; c0 += chunk) {
    const int64_t n = (N - c0) < chunk ? (N - c0) : chunk;
#pragma omp parallel
    {
#pragma omp for schedule(dynamic, 1) nowait
      for (int64_t j = 0; j < L; ++j) level_fn(L - 1 - j, c0, n);
#pragma omp barrier
#pragma omp for schedule(static)
      for (int64_t i = 0; i < n; ++i) point_fn(i, c0);
    }
  }
}

// One level over n points xp[i * D]: body(i, corners of point i), with the corners of point
// i + ahead located and handed to prefetch(corners) first (software pipeline).
template <int D, int ahead, class Prefetch, class Body>
inline void level_points(const float* xp, int64_t n, const Level& lv, Prefetch prefetch, Body body) {
  static_assert(ahead < kRing, "ring too small");
  Corners<D> ring[kRing];
  for (int64_t i = 0; i < n && i < ahead; ++i) locate<D>(xp + i * D, lv, &ring[i & (kRing - 1)]);
  for (int64_t i = 0; i < n; ++i) {
    if (i + ahead < n) {
      Corners<D>& next = ring[(i + ahead) & (kRing - 1)];
      locate<D>(xp + (i + ahead) * D, lv, &next);
      prefetch(next);
    }
    body(i, ring[i & (kRing - 1)]);
  }
}

template <int D, int FT>
void forward(const Args& a, float* out) {
  const int64_t L = a.L, N = a.N, chunk = N < kChunk ? N : kChunk;
  Scratch buf(static_cast<size_t>(chunk * L * a.F));  // per-level outputs, [L][n][F]
  const float* params = a.params;
  auto level = [&](int64_t l, int64_t c0, int64_t n) {
    // F is a compile-time constant where FT > 0; each lambda takes its own copy (a captured
    // reference would not be one).
    const int F = Feat<FT>::get(a.F);
    float* dst = buf.p + l * chunk * F;
    auto prefetch = [&](const Corners<D>& c) {
      const int F = Feat<FT>::get(a.F);
      for (int k = 0; k < Corners<D>::K; ++k) __builtin_prefetch(params + c.entry[k] * F, 0, 3);
    };
    level_points<D, kAheadFwd>(a.x + c0 * D, n, a.levels[l], prefetch, [&](int64_t i, const Corners<D>& c) {
      const int F = Feat<FT>::get(a.F);
      float acc[FT > 0 ? FT : 16];
      for (int f = 0; f < F; ++f) acc[f] = 0.f;
      for (int k = 0; k < Corners<D>::K; ++k) {
        const float* v = params + c.entry[k] * F;
        for (int f = 0; f < F; ++f) acc[f] = std::fma(c.w[k], v[f], acc[f]);
      }
      for (int f = 0; f < F; ++f) dst[i * F + f] = acc[f];
    });
  };
  auto gather = [&](int64_t i, int64_t c0) {  // [L][n][F] -> out[c0 + i][l * F + f]
    const int F = Feat<FT>::get(a.F);
    float* o = out + (c0 + i) * L * F;
    for (int64_t l = 0; l < L; ++l)
      for (int f = 0; f < F; ++f) o[l * F + f] = buf.p[(l * chunk + i) * F + f];
  };
  chunked_levels(N, L, chunk, level, gather);
}

template <int D, int FT>
void backward(const Args& a, const float* dout, float* dparams, float* dx) {
  const int64_t L = a.L, N = a.N, chunk = N < kChunk ? N : kChunk;
  Scratch buf(static_cast<size_t>(chunk * L * D));  // d out_l / d x per level, [L][n][D]
  // Values and gradients interleaved per entry, [P / F][2F]: a corner's read and its scatter share
  // one cache line instead of one in each of two arrays (the backward is bound by those misses).
  Scratch table(static_cast<size_t>(2 * a.P));
  auto level = [&](int64_t l, int64_t c0, int64_t n) {
    const int F = Feat<FT>::get(a.F);
    const Level& lv = a.levels[l];
    if (c0 == 0) {  // the level's first chunk: its slice of the interleaved table
      const float* src = a.params + lv.offset * F;
      float* dst = table.p + lv.offset * 2 * F;
      for (int64_t e = 0; e < lv.size; ++e) {
        for (int f = 0; f < F; ++f) dst[e * 2 * F + f] = src[e * F + f];
        for (int f = 0; f < F; ++f) dst[e * 2 * F + F + f] = 0.f;
      }
    }
    float* dxl = buf.p + l * chunk * D;
    const float* gp = dout + c0 * L * F + l * F;
    auto prefetch = [&](const Corners<D>& c) {
      const int F = Feat<FT>::get(a.F);
      for (int k = 0; k < Corners<D>::K; ++k) __builtin_prefetch(table.p + c.entry[k] * 2 * F, 1, 3);
    };
    level_points<D, kAheadBwd>(a.x + c0 * D, n, lv, prefetch, [&](int64_t i, const Corners<D>& c) {
      const int F = Feat<FT>::get(a.F);
      const float* g = gp + i * L * F;
      float dfrac[D];
      for (int d = 0; d < D; ++d) dfrac[d] = 0.f;
      for (int k = 0; k < Corners<D>::K; ++k) {
        const float* v = table.p + c.entry[k] * 2 * F;
        float* tk = table.p + c.entry[k] * 2 * F + F;
        float gv = 0.f;
        for (int f = 0; f < F; ++f) {
          tk[f] = std::fma(c.w[k], g[f], tk[f]);
          gv = std::fma(g[f], v[f], gv);
        }
        // d w_k / d frac_d = (+-1) * prod_{e != d} a_e
        for (int d = 0; d < D; ++d) {
          float others = 1.f;
          for (int e = 0; e < D; ++e)
            if (e != d) others *= c.a[e][(k >> e) & 1];
          dfrac[d] = ((k >> d) & 1) ? std::fma(others, gv, dfrac[d]) : std::fma(-others, gv, dfrac[d]);
        }
      }
      for (int d = 0; d < D; ++d) dxl[i * D + d] = lv.scale * dfrac[d];
    });
  };
  auto sum_levels = [&](int64_t i, int64_t c0) {  // in level order: independent of the thread count
    for (int d = 0; d < D; ++d) {
      float s = 0.f;
      for (int64_t l = 0; l < L; ++l) s += buf.p[(l * chunk + i) * D + d];
      dx[(c0 + i) * D + d] = s;
    }
  };
  chunked_levels(N, L, chunk, level, sum_levels);
  const int F = a.F;
  const int64_t entries = a.P / F;
#pragma omp parallel for schedule(static)
  for (int64_t e = 0; e < entries; ++e)
    for (int f = 0; f < F; ++f) dparams[e * F + f] = table.p[e * 2 * F + F + f];
}

bool parse(int nparam, void** params, int* ndims, int64_t** shapes, int n_expected, Args* a) {
  if (nparam != n_expected || ndims[0] != 2 || ndims[2] != 2) return false;
  a->N = shapes[0][0];
  a->D = static_cast<int>(shapes[0][1]);
  a->P = shapes[1][0];
  a->L = shapes[2][0];
  if (a->D < 1 || a->D > kMaxDims || shapes[2][1] != 3 + a->D || a->L < 1) return false;
  a->x = static_cast<const float*>(params[0]);
  a->params = static_cast<const float*>(params[1]);
  a->levels = read_levels(static_cast<const int64_t*>(params[2]), static_cast<const float*>(params[3]), a->L, a->D);
  int64_t entries = a->levels.back().offset + a->levels.back().size;
  if (entries <= 0 || a->P % entries != 0) return false;
  a->F = static_cast<int>(a->P / entries);
  return a->F >= 1 && a->F <= 16;
}

// Calls Fn<D, FT>::run(args...) for the runtime D (1..7) and F (2, the usual, as a constant; others
// at runtime: fewer instantiations keep the first-use compile short).
template <template <int, int> class Fn, int D, typename... T>
void with_f(int F, T... args) {
  if (F == 2) {
    Fn<D, 2>::run(args...);
  } else {
    Fn<D, 0>::run(args...);
  }
}

template <template <int, int> class Fn, typename... T>
void dispatch(int D, int F, T... args) {
  switch (D) {
    case 1: with_f<Fn, 1>(F, args...); break;
    case 2: with_f<Fn, 2>(F, args...); break;
    case 3: with_f<Fn, 3>(F, args...); break;
    case 4: with_f<Fn, 4>(F, args...); break;
    case 5: with_f<Fn, 5>(F, args...); break;
    case 6: with_f<Fn, 6>(F, args...); break;
    default: with_f<Fn, 7>(F, args...);
  }
}

template <int D, int FT>
struct Fwd {
  static void run(const Args* a, float* out) { forward<D, FT>(*a, out); }
};
template <int D, int FT>
struct Bwd {
  static void run(const Args* a, const float* dout, float* dparams, float* dx) {
    backward<D, FT>(*a, dout, dparams, dx);
  }
};

}  // namespace

extern "C" int hashgrid_fwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                            void* stream, void* extra) {
  Args a;
  if (!parse(nparam, params, ndims, shapes, 5, &a)) return 1;
  if (a.N == 0) return 0;
  dispatch<Fwd>(a.D, a.F, static_cast<const Args*>(&a), static_cast<float*>(params[4]));
  return 0;
}

extern "C" int hashgrid_bwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                            void* stream, void* extra) {
  Args a;
  if (!parse(nparam, params, ndims, shapes, 7, &a)) return 1;
  float* dparams = static_cast<float*>(params[5]);
  if (a.N == 0) {
    std::memset(dparams, 0, sizeof(float) * a.P);
    return 0;
  }
  dispatch<Bwd>(a.D, a.F, static_cast<const Args*>(&a), static_cast<const float*>(params[4]), dparams,
                static_cast<float*>(params[6]));
  return 0;
}
