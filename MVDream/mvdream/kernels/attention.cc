// Multi-head scaled dot-product attention for MindSpore ops.Custom(func_type="aot") on CPU, one
// query block at a time, so the (Nq, Nk) logits never exist whole.
//
// attention_fwd(q [B, Nq, H*D], k [B, Nk, H*D], v [B, Nk, H*D], cfg [2] = (scale, H))
//   -> out [B, Nq, H*D], out = softmax(scale * q k^T) v per batch element and head;
//   float32, contiguous; heads are read in place (leading dimension H*D), no transposes.
//
// Why: the multiview UNet's self-attention at 32x32 latents attends 4 x 1024 tokens, so its
// logits are 2 x 5 x 4096 x 4096 floats (671 MB). Written out, softmaxed and read back by
// separate ops, that memory traffic cost more than the two GEMMs. Here each task takes
// kBlock query rows of one (batch, head): S = scale * q_blk k^T (oneDNN sgemm, in L2), a row
// softmax in place, then out_blk = S v. The tasks are independent, so a sample's output does
// not depend on the batch or the thread count (oneDNN's sgemm sums in a fixed order from 16 rows
// on, and the blocks of a sample are the same whatever the batch).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>

#include "vector_math.h"

extern "C" int dnnl_sgemm(char transa, char transb, int64_t M, int64_t N, int64_t K, float alpha,
                          const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                          int64_t ldc);

namespace {

using mvdream_kernels::exp_poly;

constexpr int64_t kBlock = 64;  // query rows per task: 64 x 4096 logits are 1 MB

// Softmax of each of the m rows of s (row length n), in place. Sums in 8 lanes, combined in a
// fixed order, so a row's result depends on its values alone.
void softmax_rows(float* s, int64_t m, int64_t n) {
  constexpr int kLanes = 8;
  for (int64_t i = 0; i < m; ++i) {
    float* row = s + i * n;
    float mx = -INFINITY;
    for (int64_t j = 0; j < n; ++j) mx = std::max(mx, row[j]);
    float acc[kLanes] = {};
    const int64_t body = n - n % kLanes;
    for (int64_t j = 0; j < body; j += kLanes) {
#pragma omp simd
      for (int l = 0; l < kLanes; ++l) {
        const float e = exp_poly(row[j + l] - mx);
        row[j + l] = e;
        acc[l] += e;
      }
    }
    for (int64_t j = body; j < n; ++j) {
      row[j] = exp_poly(row[j] - mx);
      acc[j - body] += row[j];
    }
    const float sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    const float inv = 1.0f / sum;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) row[j] *= inv;
  }
}

}  // namespace

extern "C" int attention_fwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                             void* stream, void* extra) {
  if (nparam != 5 || ndims[0] != 3 || ndims[1] != 3 || ndims[2] != 3 || ndims[3] != 1 || shapes[3][0] != 2) return 1;
  const int64_t B = shapes[0][0], Nq = shapes[0][1], inner = shapes[0][2], Nk = shapes[1][1];
  const float* cfg = static_cast<const float*>(params[3]);
  const float scale = cfg[0];
  const int64_t H = static_cast<int64_t>(cfg[1]);
  if (H < 1 || inner % H != 0 || shapes[1][0] != B || shapes[2][0] != B || shapes[1][2] != inner ||
      shapes[2][1] != Nk || shapes[2][2] != inner)
    return 1;
  const int64_t D = inner / H;
  const float* q = static_cast<const float*>(params[0]);
  const float* k = static_cast<const float*>(params[1]);
  const float* v = static_cast<const float*>(params[2]);
  float* out = static_cast<float*>(params[4]);
  if (B == 0 || Nq == 0) return 0;
  const int64_t blocks = (Nq + kBlock - 1) / kBlock;
  int status = 0;
#pragma omp parallel reduction(| : status)
  {
    std::unique_ptr<float[]> logits(new float[kBlock * Nk]);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < B * H * blocks; ++task) {
      const int64_t b = task / (H * blocks), h = task / blocks % H, q0 = task % blocks * kBlock;
      const int64_t m = std::min(kBlock, Nq - q0);
      const int64_t head = h * D;  // the head's first column in a row
      const float* qb = q + (b * Nq + q0) * inner + head;
      const float* kb = k + b * Nk * inner + head;
      const float* vb = v + b * Nk * inner + head;
      status |= dnnl_sgemm('N', 'T', m, Nk, D, scale, qb, inner, kb, inner, 0.0f, logits.get(), Nk);
      softmax_rows(logits.get(), m, Nk);
      status |= dnnl_sgemm('N', 'N', m, D, Nk, 1.0f, logits.get(), Nk, vb, inner, 0.0f,
                           out + (b * Nq + q0) * inner + head, inner);
    }
  }
  return status;
}
