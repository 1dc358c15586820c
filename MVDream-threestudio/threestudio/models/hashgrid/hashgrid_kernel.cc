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
// Work is split by level: each level owns a disjoint slice of the table, so the parameter
// gradient needs no atomics, and one level's slice stays in cache while its points stream by.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

constexpr uint32_t kPrimes[7] = {1u, 2654435761u, 805459861u, 3674653429u, 2097192037u, 1434869437u, 2165219737u};
constexpr int kMaxDims = 7;

struct Level {
  int64_t offset, size;
  bool hashed;
  uint32_t stride[kMaxDims];
  float scale;
};

std::vector<Level> read_levels(const int64_t* meta, const float* scale, int64_t L, int D) {
  std::vector<Level> levels(L);
  for (int64_t l = 0; l < L; ++l) {
    const int64_t* m = meta + l * (3 + D);
    levels[l].offset = m[0];
    levels[l].size = m[1];
    levels[l].hashed = m[2] != 0;
    for (int d = 0; d < D; ++d) levels[l].stride[d] = static_cast<uint32_t>(m[3 + d]);
    levels[l].scale = scale[l];
  }
  return levels;
}

// Per point and level: integer cell, fractional position, and the entry of every corner.
struct Cell {
  uint32_t grid[kMaxDims];
  float frac[kMaxDims];
};

inline Cell locate(const float* x, const Level& lv, int D) {
  Cell c;
  for (int d = 0; d < D; ++d) {
    float pos = std::fma(lv.scale, x[d], 0.5f);
    float fl = std::floor(pos);
    c.grid[d] = static_cast<uint32_t>(static_cast<int>(fl));
    c.frac[d] = pos - fl;
  }
  return c;
}

inline int64_t corner_entry(const Cell& c, const Level& lv, int D, int corner) {
  uint32_t index = 0;
  for (int d = 0; d < D; ++d) {
    uint32_t g = c.grid[d] + ((corner >> d) & 1);
    index = lv.hashed ? (index ^ (g * kPrimes[d])) : (index + g * lv.stride[d]);
  }
  return lv.offset + static_cast<int64_t>(index % static_cast<uint32_t>(lv.size));
}

inline float corner_weight(const Cell& c, int D, int corner, int skip_dim = -1) {
  float w = 1.f;
  for (int d = 0; d < D; ++d) {
    if (d == skip_dim) continue;
    w *= ((corner >> d) & 1) ? c.frac[d] : 1.f - c.frac[d];
  }
  return w;
}

struct Args {
  int64_t N, L, P;
  int D, F;
  const float* x;
  const float* params;
  std::vector<Level> levels;
};

bool parse(int nparam, void** params, int* ndims, int64_t** shapes, int n_expected, Args* a) {
  if (nparam != n_expected || ndims[0] != 2 || ndims[2] != 2) return false;
  a->N = shapes[0][0];
  a->D = static_cast<int>(shapes[0][1]);
  a->P = shapes[1][0];
  a->L = shapes[2][0];
  if (a->D < 1 || a->D > kMaxDims || shapes[2][1] != 3 + a->D) return false;
  a->x = static_cast<const float*>(params[0]);
  a->params = static_cast<const float*>(params[1]);
  a->levels = read_levels(static_cast<const int64_t*>(params[2]), static_cast<const float*>(params[3]), a->L, a->D);
  int64_t entries = a->levels.back().offset + a->levels.back().size;
  if (entries <= 0 || a->P % entries != 0) return false;
  a->F = static_cast<int>(a->P / entries);
  return true;
}

}  // namespace

extern "C" int hashgrid_fwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                            void* stream, void* extra) {
  Args a;
  if (!parse(nparam, params, ndims, shapes, 5, &a)) return 1;
  float* out = static_cast<float*>(params[4]);
  const int corners = 1 << a.D;
  const int64_t stride_out = a.L * a.F;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t l = 0; l < a.L; ++l) {
    const Level& lv = a.levels[l];
    for (int64_t i = 0; i < a.N; ++i) {
      Cell c = locate(a.x + i * a.D, lv, a.D);
      float acc[16] = {0.f};
      for (int k = 0; k < corners; ++k) {
        const float w = corner_weight(c, a.D, k);
        const float* v = a.params + corner_entry(c, lv, a.D, k) * a.F;
        for (int f = 0; f < a.F; ++f) acc[f] += w * v[f];
      }
      std::memcpy(out + i * stride_out + l * a.F, acc, sizeof(float) * a.F);
    }
  }
  return 0;
}

extern "C" int hashgrid_bwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                            void* stream, void* extra) {
  Args a;
  if (!parse(nparam, params, ndims, shapes, 7, &a)) return 1;
  const float* dout = static_cast<const float*>(params[4]);
  float* dparams = static_cast<float*>(params[5]);
  float* dx = static_cast<float*>(params[6]);
  const int corners = 1 << a.D;
  const int64_t stride_out = a.L * a.F;
  std::memset(dparams, 0, sizeof(float) * a.P);
  // One pass per level gives both gradients. The table gradient needs no atomics (levels own
  // disjoint slices); the input gradient sums over levels, so each thread accumulates its own
  // copy and the copies are added at the end.
  int n_threads = 1;
#ifdef _OPENMP
  n_threads = omp_get_max_threads();
#endif
  std::vector<float> dx_parts(static_cast<size_t>(n_threads) * a.N * a.D, 0.f);
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t l = 0; l < a.L; ++l) {
    int thread = 0;
#ifdef _OPENMP
    thread = omp_get_thread_num();
#endif
    float* dx_part = dx_parts.data() + static_cast<size_t>(thread) * a.N * a.D;
    const Level& lv = a.levels[l];
    for (int64_t i = 0; i < a.N; ++i) {
      const float* g = dout + i * stride_out + l * a.F;
      Cell c = locate(a.x + i * a.D, lv, a.D);
      float* dxi = dx_part + i * a.D;
      for (int k = 0; k < corners; ++k) {
        const int64_t e = corner_entry(c, lv, a.D, k) * a.F;
        const float w = corner_weight(c, a.D, k);
        const float* v = a.params + e;
        float* t = dparams + e;
        float gv = 0.f;
        for (int f = 0; f < a.F; ++f) {
          t[f] += w * g[f];
          gv += g[f] * v[f];
        }
        // d w_k / d x_d = (+-1) * scale * prod_{e != d} w_e
        for (int d = 0; d < a.D; ++d) {
          const float sign = ((k >> d) & 1) ? lv.scale : -lv.scale;
          dxi[d] += sign * corner_weight(c, a.D, k, d) * gv;
        }
      }
    }
  }
  const int64_t n = a.N * a.D;
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < n; ++j) {
    float sum = 0.f;
    for (int t = 0; t < n_threads; ++t) sum += dx_parts[static_cast<size_t>(t) * n + j];
    dx[j] = sum;
  }
  return 0;
}
