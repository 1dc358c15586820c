// Fused CPU normalisation / activation kernels for MindSpore ops.Custom(func_type="aot").
//
// float32, contiguous (callers ensure it). The backwards take the forward's inputs and
// recompute the statistics, so no extra tensor (mean, rstd, pre-activation) has to be kept
// alive between forward and backward.
//
// group_norm_fwd(x [N, C, *], gamma [C], beta [C], cfg [3] = (groups, eps, silu)) -> y
// group_norm_bwd(x, gamma, beta, cfg, dy)                                      -> dx, dgamma, dbeta
// layer_norm_fwd(x [*, C], gamma [C], beta [C], cfg [1] = (eps))                -> y
// layer_norm_bwd(x, gamma, beta, cfg, dy)                                      -> dx, dgamma, dbeta
// gelu_fwd(x) -> y ; gelu_bwd(x, dy) -> dx                     exact (erf) GELU
// geglu_fwd(h [*, 2D]) -> y [*, D] = h[..., :D] * gelu(h[..., D:]) ; geglu_bwd(h, dy) -> dh
//
// Statistics are accumulated in double (two passes), so results match a float64 reference to
// float32 rounding. exp is a branch-free polynomial after Cephes (~1 ulp) that the compiler
// vectorises; erf is libm's.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

inline float exp_poly(float x) {
  x = std::min(std::max(x, -87.3f), 88.7f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return e * scale;
}

// GELU's erf is libm's (< 1 ulp): the cheaper polynomial's 1.5e-7 error shows through the
// guidance scale (x10) in DDIM parity.
inline float gelu(float x) { return 0.5f * x * (1.0f + std::erf(x * 0.70710678118654752f)); }

inline float gelu_grad(float x) {
  // d/dx [x * Phi(x)] = Phi(x) + x * phi(x)
  return 0.5f * (1.0f + std::erf(x * 0.70710678118654752f)) +
         x * 0.39894228040143268f * exp_poly(-0.5f * x * x);
}

inline float sigmoid(float x) { return 1.0f / (1.0f + exp_poly(-x)); }

int64_t numel(int ndim, const int64_t* shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Mean and 1/sqrt(var + eps) of n contiguous values, accumulated in double.
inline void moments(const float* x, int64_t n, double eps, float* mean, float* rstd) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += x[i];
  const double m = s / n;
  double v = 0.0;
#pragma omp simd reduction(+ : v)
  for (int64_t i = 0; i < n; ++i) {
    const double d = x[i] - m;
    v += d * d;
  }
  *mean = static_cast<float>(m);
  *rstd = static_cast<float>(1.0 / std::sqrt(v / n + eps));
}

struct GroupShape {
  int64_t N, C, S, G, Cg;
  double eps;
  bool silu;
};

bool group_shape(int* ndims, int64_t** shapes, void** params, GroupShape* g) {
  if (ndims[0] < 2 || ndims[1] != 1 || ndims[2] != 1 || ndims[3] != 1 || shapes[3][0] != 3) return false;
  const float* cfg = static_cast<const float*>(params[3]);
  g->N = shapes[0][0];
  g->C = shapes[0][1];
  g->S = numel(ndims[0] - 2, shapes[0] + 2);
  g->G = static_cast<int64_t>(cfg[0]);
  g->eps = cfg[1];
  g->silu = cfg[2] != 0.f;
  if (g->G <= 0 || g->C % g->G != 0 || shapes[1][0] != g->C || shapes[2][0] != g->C) return false;
  g->Cg = g->C / g->G;
  return true;
}

}  // namespace

extern "C" int group_norm_fwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                              void* stream, void* extra) {
  GroupShape g;
  if (nparam != 5 || !group_shape(ndims, shapes, params, &g)) return 1;
  const float* x = static_cast<const float*>(params[0]);
  const float* gamma = static_cast<const float*>(params[1]);
  const float* beta = static_cast<const float*>(params[2]);
  float* y = static_cast<float*>(params[4]);
#pragma omp parallel for schedule(static)
  for (int64_t ng = 0; ng < g.N * g.G; ++ng) {
    const int64_t base = ng * g.Cg * g.S;
    float mean, rstd;
    moments(x + base, g.Cg * g.S, g.eps, &mean, &rstd);
    const int64_t c0 = (ng % g.G) * g.Cg;
    for (int64_t c = 0; c < g.Cg; ++c) {
      const float a = rstd * gamma[c0 + c];
      const float b = beta[c0 + c] - mean * a;
      const float* xc = x + base + c * g.S;
      float* yc = y + base + c * g.S;
      if (g.silu) {
#pragma omp simd
        for (int64_t s = 0; s < g.S; ++s) {
          const float v = xc[s] * a + b;
          yc[s] = v * sigmoid(v);
        }
      } else {
#pragma omp simd
        for (int64_t s = 0; s < g.S; ++s) yc[s] = xc[s] * a + b;
      }
    }
  }
  return 0;
}

extern "C" int group_norm_bwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                              void* stream, void* extra) {
  GroupShape g;
  if (nparam != 8 || !group_shape(ndims, shapes, params, &g)) return 1;
  const float* x = static_cast<const float*>(params[0]);
  const float* gamma = static_cast<const float*>(params[1]);
  const float* beta = static_cast<const float*>(params[2]);
  const float* dy = static_cast<const float*>(params[4]);
  float* dx = static_cast<float*>(params[5]);
  float* dgamma = static_cast<float*>(params[6]);
  float* dbeta = static_cast<float*>(params[7]);
  // Per-sample channel sums of dy*xhat and dy, reduced over the batch at the end.
  std::vector<double> part_g(g.N * g.C), part_b(g.N * g.C);
#pragma omp parallel for schedule(static)
  for (int64_t ng = 0; ng < g.N * g.G; ++ng) {
    const int64_t n = ng / g.G;
    const int64_t base = ng * g.Cg * g.S;
    float mean, rstd;
    moments(x + base, g.Cg * g.S, g.eps, &mean, &rstd);
    const int64_t c0 = (ng % g.G) * g.Cg;
    // dz = dL/d(norm output before the affine map): dy (through SiLU) * gamma.
    // dx = rstd * (dz - mean(dz) - xhat * mean(dz * xhat)) over the group.
    double sum_dz = 0.0, sum_dz_xhat = 0.0;
    float* dxg = dx + base;  // holds d(pre-affine) first, then dx
    for (int64_t c = 0; c < g.Cg; ++c) {
      const float gm = gamma[c0 + c], bt = beta[c0 + c];
      const float* xc = x + base + c * g.S;
      const float* dyc = dy + base + c * g.S;
      float* dzc = dxg + c * g.S;
      double sg = 0.0, sb = 0.0, sz = 0.0, szx = 0.0;
#pragma omp simd reduction(+ : sg, sb, sz, szx)
      for (int64_t s = 0; s < g.S; ++s) {
        const float xhat = (xc[s] - mean) * rstd;
        float d = dyc[s];
        if (g.silu) {
          const float v = xhat * gm + bt;
          const float sv = sigmoid(v);
          d *= sv * (1.0f + v * (1.0f - sv));
        }
        sg += d * xhat;
        sb += d;
        const float dz = d * gm;
        dzc[s] = dz;
        sz += dz;
        szx += dz * xhat;
      }
      part_g[n * g.C + c0 + c] = sg;
      part_b[n * g.C + c0 + c] = sb;
      sum_dz += sz;
      sum_dz_xhat += szx;
    }
    const int64_t m = g.Cg * g.S;
    const float mz = static_cast<float>(sum_dz / m), mzx = static_cast<float>(sum_dz_xhat / m);
    const float* xg = x + base;
#pragma omp simd
    for (int64_t i = 0; i < m; ++i) {
      const float xhat = (xg[i] - mean) * rstd;
      dxg[i] = rstd * (dxg[i] - mz - xhat * mzx);
    }
  }
  for (int64_t c = 0; c < g.C; ++c) {
    double sg = 0.0, sb = 0.0;
    for (int64_t n = 0; n < g.N; ++n) {
      sg += part_g[n * g.C + c];
      sb += part_b[n * g.C + c];
    }
    dgamma[c] = static_cast<float>(sg);
    dbeta[c] = static_cast<float>(sb);
  }
  return 0;
}

extern "C" int layer_norm_fwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                              void* stream, void* extra) {
  if (nparam != 5 || ndims[0] < 1) return 1;
  const int64_t C = shapes[0][ndims[0] - 1];
  const int64_t R = numel(ndims[0] - 1, shapes[0]);
  if (shapes[1][0] != C || shapes[2][0] != C) return 1;
  const float* x = static_cast<const float*>(params[0]);
  const float* gamma = static_cast<const float*>(params[1]);
  const float* beta = static_cast<const float*>(params[2]);
  const double eps = static_cast<const float*>(params[3])[0];
  float* y = static_cast<float*>(params[4]);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < R; ++r) {
    float mean, rstd;
    moments(x + r * C, C, eps, &mean, &rstd);
    const float* xr = x + r * C;
    float* yr = y + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) yr[c] = (xr[c] - mean) * rstd * gamma[c] + beta[c];
  }
  return 0;
}

extern "C" int layer_norm_bwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                              void* stream, void* extra) {
  if (nparam != 8 || ndims[0] < 1) return 1;
  const int64_t C = shapes[0][ndims[0] - 1];
  const int64_t R = numel(ndims[0] - 1, shapes[0]);
  if (shapes[1][0] != C || shapes[2][0] != C) return 1;
  const float* x = static_cast<const float*>(params[0]);
  const float* gamma = static_cast<const float*>(params[1]);
  const double eps = static_cast<const float*>(params[3])[0];
  const float* dy = static_cast<const float*>(params[4]);
  float* dx = static_cast<float*>(params[5]);
  float* dgamma = static_cast<float*>(params[6]);
  float* dbeta = static_cast<float*>(params[7]);
  const int T = max_threads();
  std::vector<double> part_g(static_cast<size_t>(T) * C, 0.0), part_b(static_cast<size_t>(T) * C, 0.0);
#pragma omp parallel
  {
    double* pg = part_g.data() + static_cast<size_t>(thread_id()) * C;
    double* pb = part_b.data() + static_cast<size_t>(thread_id()) * C;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < R; ++r) {
      float mean, rstd;
      const float* xr = x + r * C;
      const float* dyr = dy + r * C;
      float* dxr = dx + r * C;
      moments(xr, C, eps, &mean, &rstd);
      double sz = 0.0, szx = 0.0;
#pragma omp simd reduction(+ : sz, szx)
      for (int64_t c = 0; c < C; ++c) {
        const float xhat = (xr[c] - mean) * rstd;
        const float dz = dyr[c] * gamma[c];
        pg[c] += dyr[c] * xhat;
        pb[c] += dyr[c];
        sz += dz;
        szx += dz * xhat;
      }
      const float mz = static_cast<float>(sz / C), mzx = static_cast<float>(szx / C);
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const float xhat = (xr[c] - mean) * rstd;
        dxr[c] = rstd * (dyr[c] * gamma[c] - mz - xhat * mzx);
      }
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    double sg = 0.0, sb = 0.0;
    for (int t = 0; t < T; ++t) {
      sg += part_g[static_cast<size_t>(t) * C + c];
      sb += part_b[static_cast<size_t>(t) * C + c];
    }
    dgamma[c] = static_cast<float>(sg);
    dbeta[c] = static_cast<float>(sb);
  }
  return 0;
}

extern "C" int gelu_fwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                        void* stream, void* extra) {
  if (nparam != 2) return 1;
  const int64_t n = numel(ndims[0], shapes[0]);
  const float* x = static_cast<const float*>(params[0]);
  float* y = static_cast<float*>(params[1]);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = gelu(x[i]);
  return 0;
}

extern "C" int gelu_bwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                        void* stream, void* extra) {
  if (nparam != 3) return 1;
  const int64_t n = numel(ndims[0], shapes[0]);
  const float* x = static_cast<const float*>(params[0]);
  const float* dy = static_cast<const float*>(params[1]);
  float* dx = static_cast<float*>(params[2]);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * gelu_grad(x[i]);
  return 0;
}

extern "C" int geglu_fwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                         void* stream, void* extra) {
  if (nparam != 2 || ndims[0] < 1 || shapes[0][ndims[0] - 1] % 2) return 1;
  const int64_t D = shapes[0][ndims[0] - 1] / 2;
  const int64_t R = numel(ndims[0] - 1, shapes[0]);
  const float* h = static_cast<const float*>(params[0]);
  float* y = static_cast<float*>(params[1]);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < R; ++r) {
    const float* a = h + r * 2 * D;
    const float* b = a + D;
    float* yr = y + r * D;
#pragma omp simd
    for (int64_t i = 0; i < D; ++i) yr[i] = a[i] * gelu(b[i]);
  }
  return 0;
}

extern "C" int geglu_bwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                         void* stream, void* extra) {
  if (nparam != 3 || ndims[0] < 1 || shapes[0][ndims[0] - 1] % 2) return 1;
  const int64_t D = shapes[0][ndims[0] - 1] / 2;
  const int64_t R = numel(ndims[0] - 1, shapes[0]);
  const float* h = static_cast<const float*>(params[0]);
  const float* dy = static_cast<const float*>(params[1]);
  float* dh = static_cast<float*>(params[2]);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < R; ++r) {
    const float* a = h + r * 2 * D;
    const float* b = a + D;
    const float* g = dy + r * D;
    float* da = dh + r * 2 * D;
    float* db = da + D;
#pragma omp simd
    for (int64_t i = 0; i < D; ++i) {
      da[i] = g[i] * gelu(b[i]);
      db[i] = g[i] * a[i] * gelu_grad(b[i]);
    }
  }
  return 0;
}
