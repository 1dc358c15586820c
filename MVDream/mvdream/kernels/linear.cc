// Linear layer for MindSpore ops.Custom(func_type="aot") on CPU: y = x w^T + b through oneDNN's
// sgemm (libdnnl, shipped inside MindSpore for its convolutions).
//
// linear_fwd(x [M, K], w [N, K], b [N]) -> y [M, N]     float32, contiguous (callers ensure it)
//
// MindSpore's CPU MatMul reaches about half of this sgemm's rate at the text encoder's shapes
// (M = 2 prompts x 77 tokens). MindSpore's oneDNN is built for a caller-supplied thread pool,
// and without one its sgemm runs on the calling thread: the OpenMP threads here each take
// 64-wide blocks of y's longer side. Measured: from 16 rows on, an element's sum does not depend
// on M, N or the block (checked to 2000 rows, 1-3 threads), so a row of y is bitwise the same in
// any batch and with any thread count; below 16 rows oneDNN rounds differently (callers pad).
#include <algorithm>
#include <cstdint>
#ifdef _OPENMP
#include <omp.h>
#endif

extern "C" int dnnl_sgemm(char transa, char transb, int64_t M, int64_t N, int64_t K, float alpha,
                          const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                          int64_t ldc);

extern "C" int linear_fwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                          void* stream, void* extra) {
  if (nparam != 4 || ndims[0] != 2 || ndims[1] != 2 || ndims[2] != 1) return 1;
  const int64_t M = shapes[0][0], K = shapes[0][1], N = shapes[1][0];
  if (shapes[1][1] != K || shapes[2][0] != N) return 1;
  const float* x = static_cast<const float*>(params[0]);
  const float* w = static_cast<const float*>(params[1]);
  const float* b = static_cast<const float*>(params[2]);
  float* y = static_cast<float*>(params[3]);
  constexpr int64_t kBlock = 64;
  const bool split_rows = M >= N;
  const int64_t side = split_rows ? M : N;
  const int64_t blocks = (side + kBlock - 1) / kBlock;
  int status = 0;
#pragma omp parallel reduction(| : status)
  {
#ifdef _OPENMP
    const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
#else
    const int64_t threads = 1, t = 0;
#endif
    const int64_t s0 = std::min(side, blocks * t / threads * kBlock);
    const int64_t s1 = std::min(side, blocks * (t + 1) / threads * kBlock);
    if (s1 > s0) {
      const int64_t m0 = split_rows ? s0 : 0, m1 = split_rows ? s1 : M;
      const int64_t n0 = split_rows ? 0 : s0, n1 = split_rows ? N : s1;
      status |= dnnl_sgemm('N', 'T', m1 - m0, n1 - n0, K, 1.0f, x + m0 * K, K, w + n0 * K, K, 0.0f,
                           y + m0 * N + n0, N);
      for (int64_t i = m0; i < m1; ++i) {
        float* row = y + i * N;
#pragma omp simd
        for (int64_t j = n0; j < n1; ++j) row[j] += b[j];
      }
    }
  }
  return status;
}
