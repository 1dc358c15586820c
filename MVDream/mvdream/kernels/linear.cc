// Linear layer for MindSpore ops.Custom(func_type="aot") on CPU: y = x w^T + b through oneDNN's
// sgemm (libdnnl, shipped inside MindSpore for its convolutions).
//
// linear_fwd(x [M, K], w [N, K], b [N]) -> y [M, N]     float32, contiguous (callers ensure it)
// linear_packed_fwd(x [M, K], handle [1] int64, b [N]) -> y [M, N]   the same product with w taken
//     from a PackedWeight (linear_pack_create), for frozen layers
//
// MindSpore's CPU MatMul reaches about half of this sgemm's rate at the text encoder's shapes
// (M = 2 prompts x 77 tokens). MindSpore's oneDNN is built for a caller-supplied thread pool,
// and without one its sgemm runs on the calling thread: the OpenMP threads here each take
// 64-wide blocks of y's longer side. Measured: from 16 rows on, an element's sum does not depend
// on M, N or the block (checked to 2000 rows, 1-3 threads), so a row of y is bitwise the same in
// any batch and with any thread count; below 16 rows oneDNN rounds differently (callers pad).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

extern "C" int dnnl_sgemm(char transa, char transb, int64_t M, int64_t N, int64_t K, float alpha,
                          const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                          int64_t ldc);

// oneDNN's packed GEMM (src/cpu/gemm/gemm_pack.hpp, exported by libdnnl.so.2 but not in its public
// headers). Column-major BLAS conventions; transa "P" in sgemm_compute reads A from a packed buffer.
namespace dnnl {
namespace impl {
namespace cpu {
using dim_t = int64_t;
int sgemm_pack_get_size(const char* identifier, const char* transa, const char* transb, const dim_t* M,
                        const dim_t* N, const dim_t* K, const dim_t* lda, const dim_t* ldb, size_t* size,
                        bool* pack);
int sgemm_pack(const char* identifier, const char* transa, const char* transb, const dim_t* M, const dim_t* N,
               const dim_t* K, const dim_t* lda, const dim_t* ldb, const float* src, float* dst);
int sgemm_compute(const char* transa, const char* transb, const dim_t* M, const dim_t* N, const dim_t* K,
                  const float* A, const dim_t* lda, const float* B, const dim_t* ldb, const float* beta, float* C,
                  const dim_t* ldc);
}  // namespace cpu
}  // namespace impl
}  // namespace dnnl

namespace {

constexpr int64_t kBlock = 64;

// [begin, end) of part t of `side` split into `parts` runs of whole kBlock-wide blocks
void block_range(int64_t side, int64_t parts, int64_t t, int64_t* begin, int64_t* end) {
  const int64_t blocks = (side + kBlock - 1) / kBlock;
  *begin = std::min(side, blocks * t / parts * kBlock);
  *end = std::min(side, blocks * (t + 1) / parts * kBlock);
}

// y[:, n0:n1] += b[n0:n1] over rows m0..m1
void add_bias(float* y, const float* b, int64_t N, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  for (int64_t i = m0; i < m1; ++i) {
    float* row = y + i * N;
#pragma omp simd
    for (int64_t j = n0; j < n1; ++j) row[j] += b[j];
  }
}

int thread_count() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// A weight w [N, K] packed for oneDNN's GEMM once, in `parts` column blocks of y (one per thread),
// so each call skips the reorder sgemm otherwise does on every call: at the text encoder's
// 154 rows that reorder is ~15% of the GEMM. Row m of y is the same bits as linear_fwd's.
struct PackedWeight {
  int64_t N = 0, K = 0, parts = 0;
  std::vector<float*> blocks;
  ~PackedWeight() {
    for (float* b : blocks) std::free(b);
  }
};

// rows of x the packing is laid out for; any M >= 16 computes the same bits with it (measured)
constexpr int64_t kPackRows = 64;

}  // namespace

// Packs w [N, K] (float32, row-major); returns an opaque handle, or 0 on failure.
// The buffers are malloc'd: oneDNN sizes them for its widest threading, about twice the weight,
// but the packing writes only the weight's own size, and pages never written are never resident.
extern "C" int64_t linear_pack_create(const float* w, int64_t N, int64_t K) {
  using namespace dnnl::impl::cpu;
  PackedWeight* packed = new (std::nothrow) PackedWeight;
  if (packed == nullptr) return 0;
  packed->N = N;
  packed->K = K;
  packed->parts = std::max<int64_t>(1, std::min<int64_t>(thread_count(), (N + kBlock - 1) / kBlock));
  for (int64_t t = 0; t < packed->parts; ++t) {
    int64_t n0, n1;
    block_range(N, packed->parts, t, &n0, &n1);
    const dim_t rows = n1 - n0, cols = kPackRows, depth = K, ld = K;
    size_t bytes = 0;
    bool worth = false;
    float* block = nullptr;
    if (sgemm_pack_get_size("A", "T", "N", &rows, &cols, &depth, &ld, &ld, &bytes, &worth) == 0) {
      block = static_cast<float*>(std::malloc(bytes));
    }
    if (block == nullptr || sgemm_pack("A", "T", "N", &rows, &cols, &depth, &ld, &ld, w + n0 * K, block) != 0) {
      std::free(block);
      delete packed;
      return 0;
    }
    packed->blocks.push_back(block);
  }
  return reinterpret_cast<int64_t>(packed);
}

extern "C" void linear_pack_destroy(int64_t handle) { delete reinterpret_cast<PackedWeight*>(handle); }

extern "C" int linear_packed_fwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                                 void* stream, void* extra) {
  using namespace dnnl::impl::cpu;
  if (nparam != 4 || ndims[0] != 2 || ndims[1] != 1 || ndims[2] != 1 || shapes[1][0] != 1) return 1;
  const PackedWeight* packed = reinterpret_cast<const PackedWeight*>(*static_cast<const int64_t*>(params[1]));
  const int64_t M = shapes[0][0], K = shapes[0][1], N = shapes[2][0];
  if (packed == nullptr || packed->K != K || packed->N != N || M < 16) return 1;
  const float* x = static_cast<const float*>(params[0]);
  const float* b = static_cast<const float*>(params[2]);
  float* y = static_cast<float*>(params[3]);
  int status = 0;
  // one block per thread as packed; a smaller team takes several
#pragma omp parallel for schedule(static, 1) reduction(| : status)
  for (int64_t t = 0; t < packed->parts; ++t) {
    int64_t n0, n1;
    block_range(N, packed->parts, t, &n0, &n1);
    const dim_t rows = n1 - n0, cols = M, depth = K, ldx = K, ldy = N;
    const float beta = 0.0f;
    status |= sgemm_compute("P", "N", &rows, &cols, &depth, packed->blocks[t], &depth, x, &ldx, &beta, y + n0,
                            &ldy);
    add_bias(y, b, N, 0, M, n0, n1);
  }
  return status;
}

extern "C" int linear_fwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                          void* stream, void* extra) {
  if (nparam != 4 || ndims[0] != 2 || ndims[1] != 2 || ndims[2] != 1) return 1;
  const int64_t M = shapes[0][0], K = shapes[0][1], N = shapes[1][0];
  if (shapes[1][1] != K || shapes[2][0] != N) return 1;
  const float* x = static_cast<const float*>(params[0]);
  const float* w = static_cast<const float*>(params[1]);
  const float* b = static_cast<const float*>(params[2]);
  float* y = static_cast<float*>(params[3]);
  const bool split_rows = M >= N;
  const int64_t side = split_rows ? M : N;
  int status = 0;
#pragma omp parallel reduction(| : status)
  {
#ifdef _OPENMP
    const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
#else
    const int64_t threads = 1, t = 0;
#endif
    int64_t s0, s1;
    block_range(side, threads, t, &s0, &s1);
    if (s1 > s0) {
      const int64_t m0 = split_rows ? s0 : 0, m1 = split_rows ? s1 : M;
      const int64_t n0 = split_rows ? 0 : s0, n1 = split_rows ? N : s1;
      status |= dnnl_sgemm('N', 'T', m1 - m0, n1 - n0, K, 1.0f, x + m0 * K, K, w + n0 * K, K, 0.0f,
                           y + m0 * N + n0, N);
      add_bias(y, b, N, m0, m1, n0, n1);
    }
  }
  return status;
}
