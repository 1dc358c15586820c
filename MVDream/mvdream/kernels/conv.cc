// 2-D convolution for MindSpore ops.Custom(func_type="aot") on CPU, through oneDNN's direct
// (JIT) convolution: the library MindSpore ships (libdnnl.so.2, v2.2) for its own Conv2D.
//
// conv_fwd(x [N, C, H, W], w [O, C, kh, kw], b [O], cfg [5])              -> y [N, O, Ho, Wo]
// conv_residual_fwd(x, w, b, r [N, O, Ho, Wo], cfg)                      -> y + r
// conv_bwd_data(dy [N, O, Ho, Wo], w, x (for its shape only), cfg)       -> dx [N, C, H, W]
// cfg = (stride, pad_top, pad_bottom, pad_left, pad_right), as floats. float32, contiguous NCHW.
//
// Why: MindSpore's Conv2D gives oneDNN plain NCHW tensors, for which oneDNN falls back to its
// im2col + GEMM convolution. Letting oneDNN choose the layout ("any") selects its direct JIT
// convolution on channel-blocked tensors (nChw16c with AVX-512, nChw8c with AVX2), as PyTorch
// does; the tensors are reordered to and from that layout around the call.
//
// Threads: MindSpore's oneDNN is built for a caller-supplied thread pool and runs on the calling
// thread without one. The stream here carries a pool whose parallel_for is an OpenMP loop.
#include <array>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#ifdef _OPENMP
#include <omp.h>
#endif

// oneDNN's thread-pool interface (dnnl_threadpool_iface.hpp). The library calls these virtual
// methods through the vtable, so their order and signatures must stay exactly these.
namespace dnnl {
namespace threadpool_interop {
struct threadpool_iface {
  virtual int get_num_threads() const = 0;
  virtual bool get_in_parallel() const = 0;
  virtual void parallel_for(int n, const std::function<void(int, int)>& fn) = 0;
  virtual uint64_t get_flags() const = 0;  // 0: synchronous
  virtual ~threadpool_iface() {}
};
}  // namespace threadpool_interop
}  // namespace dnnl

namespace {

class OpenMPThreadPool final : public dnnl::threadpool_interop::threadpool_iface {
 public:
  int get_num_threads() const override {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
  }
  bool get_in_parallel() const override {
#ifdef _OPENMP
    return omp_in_parallel();
#else
    return false;
#endif
  }
  void parallel_for(int n, const std::function<void(int, int)>& fn) override {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; ++i) fn(i, n);
  }
  uint64_t get_flags() const override { return 0; }
};

}  // namespace

// The subset of oneDNN's C API (dnnl.h, v2.2) used here. Handles are opaque pointers; memory and
// operation descriptors are plain structs the library fills in (696 and 5976 bytes in v2.2), held
// here in larger opaque buffers.
extern "C" {
typedef void* dnnl_handle;
struct dnnl_exec_arg {
  int arg;
  dnnl_handle memory;
};
int dnnl_engine_create(dnnl_handle* engine, int kind, size_t index);
int dnnl_threadpool_interop_stream_create(dnnl_handle* stream, dnnl_handle engine, void* threadpool);
int dnnl_stream_wait(dnnl_handle stream);
int dnnl_memory_desc_init_by_tag(void* md, int ndims, const int64_t* dims, int data_type, int tag);
int dnnl_memory_desc_equal(const void* lhs, const void* rhs);
int dnnl_convolution_forward_desc_init(void* desc, int prop_kind, int alg_kind, const void* src_md,
                                       const void* weights_md, const void* bias_md, const void* dst_md,
                                       const int64_t* strides, const int64_t* padding_l,
                                       const int64_t* padding_r);
int dnnl_convolution_backward_data_desc_init(void* desc, int alg_kind, const void* diff_src_md,
                                             const void* weights_md, const void* diff_dst_md,
                                             const int64_t* strides, const int64_t* padding_l,
                                             const int64_t* padding_r);
int dnnl_primitive_desc_create(dnnl_handle* pd, const void* op_desc, const void* attr, dnnl_handle engine,
                               const void* hint_forward_pd);
int dnnl_reorder_primitive_desc_create(dnnl_handle* pd, const void* src_md, dnnl_handle src_engine,
                                       const void* dst_md, dnnl_handle dst_engine, const void* attr);
const void* dnnl_primitive_desc_query_md(const void* pd, int what, int index);
int dnnl_primitive_desc_destroy(dnnl_handle pd);
int dnnl_primitive_create(dnnl_handle* primitive, const void* pd);
int dnnl_primitive_execute(const void* primitive, dnnl_handle stream, int nargs, const dnnl_exec_arg* args);
int dnnl_primitive_destroy(dnnl_handle primitive);
int dnnl_memory_create(dnnl_handle* memory, const void* md, dnnl_handle engine, void* handle);
int dnnl_memory_destroy(dnnl_handle memory);
struct dnnl_version_info {
  int major, minor, patch;
  const char* hash;
  unsigned cpu_runtime, gpu_runtime;
};
const dnnl_version_info* dnnl_version();
}

namespace {

// Constants of dnnl_types.h (v2.2).
constexpr unsigned kThreadpoolRuntime = 8;         // DNNL_RUNTIME_THREADPOOL
constexpr int kCpuEngine = 1;                      // dnnl_cpu
constexpr int kF32 = 3;                            // dnnl_f32
constexpr int kFormatAny = 1, kPlain1D = 2, kPlain4D = 5;  // dnnl_format_tag_any, dnnl_a, dnnl_abcd
constexpr int kForwardTraining = 64;                 // dnnl_prop_kind_t
constexpr int kConvolutionDirect = 1;              // dnnl_alg_kind_t
constexpr int kQuerySrc = 129, kQueryDiffSrc = 130, kQueryWeights = 131, kQueryDst = 133, kQueryDiffDst = 134;
constexpr int kArgSrc = 1, kArgDst = 17, kArgWeights = 33, kArgBias = 41, kArgDiffSrc = 129, kArgDiffDst = 145;
void* const kAllocate = reinterpret_cast<void*>(static_cast<size_t>(-1));  // DNNL_MEMORY_ALLOCATE

struct alignas(16) MemoryDesc {
  unsigned char bytes[2048];
};
struct alignas(16) OpDesc {
  unsigned char bytes[16384];
};

struct Runtime {
  OpenMPThreadPool pool;
  dnnl_handle engine = nullptr, stream = nullptr;
  bool ok = false;
  Runtime() {
    ok = dnnl_engine_create(&engine, kCpuEngine, 0) == 0 &&
         dnnl_threadpool_interop_stream_create(&stream, engine, &pool) == 0;
  }
};

Runtime& runtime() {
  static Runtime rt;  // created once, thread-safely, and kept for the process
  return rt;
}

struct PrimitiveDesc {
  dnnl_handle pd = nullptr;
  ~PrimitiveDesc() {
    if (pd) dnnl_primitive_desc_destroy(pd);
  }
};

struct Primitive {
  dnnl_handle prim = nullptr;
  ~Primitive() {
    if (prim) dnnl_primitive_destroy(prim);
  }
};

struct Memory {
  dnnl_handle mem = nullptr;
  ~Memory() {
    if (mem) dnnl_memory_destroy(mem);
  }
};

// A reorder between a plain user tensor and the layout the convolution chose (``chosen`` points
// into the plan's primitive descriptor); no primitive when the two are the same, and the user's
// buffer is then used directly.
struct Reorder {
  MemoryDesc plain;
  const void* chosen = nullptr;
  Primitive primitive;
  bool needed() const { return primitive.prim != nullptr; }
};

bool make_reorder(Reorder* r, const MemoryDesc& plain, const void* chosen, bool to_chosen) {
  r->plain = plain;
  r->chosen = chosen;
  if (chosen == nullptr) return false;
  if (dnnl_memory_desc_equal(&r->plain, chosen)) return true;
  PrimitiveDesc pd;
  const void* from = to_chosen ? static_cast<const void*>(&r->plain) : chosen;
  const void* to = to_chosen ? chosen : static_cast<const void*>(&r->plain);
  Runtime& rt = runtime();
  return dnnl_reorder_primitive_desc_create(&pd.pd, from, rt.engine, to, rt.engine, nullptr) == 0 &&
         dnnl_primitive_create(&r->primitive.prim, pd.pd) == 0;
}

bool plain_md(MemoryDesc* md, int ndims, const int64_t* dims, int tag) {
  return dnnl_memory_desc_init_by_tag(md, ndims, dims, kF32, tag) == 0;
}

// Everything one convolution call needs that depends only on the shapes and the geometry:
// built once and kept, since building the descriptors costs more than a small convolution.
struct Plan {
  PrimitiveDesc forward, backward;  // kept: the reorders' chosen layouts point into them
  Primitive conv;
  Reorder input, weights, output;  // input: src (fwd) or diff_dst (bwd); output: dst or diff_src
  MemoryDesc bias;
  bool ok = false;
};

using PlanKey = std::array<int64_t, 15>;

struct Geometry {
  int64_t strides[2], pad_l[2], pad_r[2];
};

Geometry read_geometry(const float* cfg) {
  const int64_t s = static_cast<int64_t>(cfg[0]);
  return {{s, s},
          {static_cast<int64_t>(cfg[1]), static_cast<int64_t>(cfg[3])},
          {static_cast<int64_t>(cfg[2]), static_cast<int64_t>(cfg[4])}};
}

// The forward descriptor with every layout left to oneDNN (also the backward's hint).
bool forward_pd(PrimitiveDesc* pd, const int64_t* x, const int64_t* w, const int64_t* y, const Geometry& g,
                MemoryDesc* bias) {
  MemoryDesc src, weights, dst;
  const int64_t bias_dims[1] = {w[0]};
  OpDesc desc;
  Runtime& rt = runtime();
  return dnnl_memory_desc_init_by_tag(&src, 4, x, kF32, kFormatAny) == 0 &&
         dnnl_memory_desc_init_by_tag(&weights, 4, w, kF32, kFormatAny) == 0 &&
         dnnl_memory_desc_init_by_tag(&dst, 4, y, kF32, kFormatAny) == 0 && plain_md(bias, 1, bias_dims, kPlain1D) &&
         dnnl_convolution_forward_desc_init(&desc, kForwardTraining, kConvolutionDirect, &src, &weights, bias, &dst,
                                            g.strides, g.pad_l, g.pad_r) == 0 &&
         dnnl_primitive_desc_create(&pd->pd, &desc, nullptr, rt.engine, nullptr) == 0;
}

bool build_plan(Plan* plan, bool backward, const int64_t* x, const int64_t* w, const int64_t* y,
                const Geometry& g) {
  MemoryDesc x_plain, w_plain, y_plain;
  if (!plain_md(&x_plain, 4, x, kPlain4D) || !plain_md(&w_plain, 4, w, kPlain4D) || !plain_md(&y_plain, 4, y, kPlain4D))
    return false;
  PrimitiveDesc& fwd = plan->forward;
  if (!forward_pd(&fwd, x, w, y, g, &plan->bias)) return false;
  Runtime& rt = runtime();
  if (!backward) {
    return make_reorder(&plan->input, x_plain, dnnl_primitive_desc_query_md(fwd.pd, kQuerySrc, 0), true) &&
           make_reorder(&plan->weights, w_plain, dnnl_primitive_desc_query_md(fwd.pd, kQueryWeights, 0), true) &&
           make_reorder(&plan->output, y_plain, dnnl_primitive_desc_query_md(fwd.pd, kQueryDst, 0), false) &&
           dnnl_primitive_create(&plan->conv.prim, fwd.pd) == 0;
  }
  MemoryDesc diff_src, weights, diff_dst;
  OpDesc desc;
  PrimitiveDesc& bwd = plan->backward;
  return dnnl_memory_desc_init_by_tag(&diff_src, 4, x, kF32, kFormatAny) == 0 &&
         dnnl_memory_desc_init_by_tag(&weights, 4, w, kF32, kFormatAny) == 0 &&
         dnnl_memory_desc_init_by_tag(&diff_dst, 4, y, kF32, kFormatAny) == 0 &&
         dnnl_convolution_backward_data_desc_init(&desc, kConvolutionDirect, &diff_src, &weights, &diff_dst,
                                                  g.strides, g.pad_l, g.pad_r) == 0 &&
         dnnl_primitive_desc_create(&bwd.pd, &desc, nullptr, rt.engine, fwd.pd) == 0 &&
         make_reorder(&plan->input, y_plain, dnnl_primitive_desc_query_md(bwd.pd, kQueryDiffDst, 0), true) &&
         make_reorder(&plan->weights, w_plain, dnnl_primitive_desc_query_md(bwd.pd, kQueryWeights, 0), true) &&
         make_reorder(&plan->output, x_plain, dnnl_primitive_desc_query_md(bwd.pd, kQueryDiffSrc, 0), false) &&
         dnnl_primitive_create(&plan->conv.prim, bwd.pd) == 0;
}

const Plan* find_plan(bool backward, const int64_t* x, const int64_t* w, const int64_t* y, const Geometry& g) {
  static std::mutex mutex;
  static std::map<PlanKey, std::unique_ptr<Plan>> plans;
  const PlanKey key = {backward, x[0], x[1], x[2], x[3], w[0], w[2], w[3], y[2], y[3],
                       g.strides[0], g.pad_l[0], g.pad_l[1], g.pad_r[0], g.pad_r[1]};
  std::lock_guard<std::mutex> lock(mutex);
  auto it = plans.find(key);
  if (it == plans.end()) {
    auto plan = std::unique_ptr<Plan>(new Plan());
    plan->ok = runtime().ok && build_plan(plan.get(), backward, x, w, y, g);
    it = plans.emplace(key, std::move(plan)).first;
  }
  return it->second->ok ? it->second.get() : nullptr;
}

// A oneDNN memory over the user's buffer, and, when the layouts differ, one in the chosen layout.
struct Operand {
  Memory plain, chosen;
  dnnl_handle used() const { return chosen.mem ? chosen.mem : plain.mem; }
};

bool wrap(Operand* op, const Reorder& r, void* data, bool reorder_in) {
  Runtime& rt = runtime();
  if (dnnl_memory_create(&op->plain.mem, &r.plain, rt.engine, data) != 0) return false;
  if (!r.needed()) return true;
  if (dnnl_memory_create(&op->chosen.mem, r.chosen, rt.engine, kAllocate) != 0) return false;
  if (!reorder_in) return true;
  const dnnl_exec_arg args[2] = {{kArgSrc, op->plain.mem}, {kArgDst, op->chosen.mem}};
  return dnnl_primitive_execute(r.primitive.prim, rt.stream, 2, args) == 0;
}

bool reorder_out(Operand* op, const Reorder& r) {
  if (!r.needed()) return true;
  const dnnl_exec_arg args[2] = {{kArgSrc, op->chosen.mem}, {kArgDst, op->plain.mem}};
  return dnnl_primitive_execute(r.primitive.prim, runtime().stream, 2, args) == 0;
}

// y = conv(x, w) + b (+ r): 0 on success.
int convolution_forward(void** params, int64_t** shapes, const float* residual, const float* cfg, float* y) {
  const int64_t *xs = shapes[0], *ws = shapes[1];
  const int64_t* ys = shapes[residual ? 5 : 4];  // the output, after the inputs (and cfg)
  const Plan* plan = find_plan(false, xs, ws, ys, read_geometry(cfg));
  if (plan == nullptr) return 1;
  Runtime& rt = runtime();
  Operand src, weights, dst;
  Memory bias;
  if (!wrap(&src, plan->input, params[0], true) || !wrap(&weights, plan->weights, params[1], true) ||
      !wrap(&dst, plan->output, y, false) ||
      dnnl_memory_create(&bias.mem, &plan->bias, rt.engine, params[2]) != 0)
    return 1;
  const dnnl_exec_arg args[4] = {
      {kArgSrc, src.used()}, {kArgWeights, weights.used()}, {kArgBias, bias.mem}, {kArgDst, dst.used()}};
  if (dnnl_primitive_execute(plan->conv.prim, rt.stream, 4, args) != 0 || !reorder_out(&dst, plan->output)) return 1;
  if (residual) {
    const int64_t n = ys[0] * ys[1] * ys[2] * ys[3];
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) y[i] += residual[i];
  }
  return dnnl_stream_wait(rt.stream);
}

bool is_4d(const int* ndims, int i) { return ndims[i] == 4; }

}  // namespace

extern "C" int conv_fwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void* stream,
                        void* extra) {
  if (nparam != 5 || !is_4d(ndims, 0) || !is_4d(ndims, 1) || ndims[2] != 1 || !is_4d(ndims, 4)) return 1;
  return convolution_forward(params, shapes, nullptr, static_cast<const float*>(params[3]),
                             static_cast<float*>(params[4]));
}

extern "C" int conv_residual_fwd(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                                 void* stream, void* extra) {
  if (nparam != 6 || !is_4d(ndims, 0) || !is_4d(ndims, 1) || ndims[2] != 1 || !is_4d(ndims, 3) || !is_4d(ndims, 5))
    return 1;
  return convolution_forward(params, shapes, static_cast<const float*>(params[3]),
                             static_cast<const float*>(params[4]), static_cast<float*>(params[5]));
}

extern "C" int conv_bwd_data(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                             void* stream, void* extra) {
  if (nparam != 5 || !is_4d(ndims, 0) || !is_4d(ndims, 1) || !is_4d(ndims, 2) || !is_4d(ndims, 4)) return 1;
  const int64_t *dys = shapes[0], *ws = shapes[1], *xs = shapes[2];
  const Plan* plan = find_plan(true, xs, ws, dys, read_geometry(static_cast<const float*>(params[3])));
  if (plan == nullptr) return 1;
  Runtime& rt = runtime();
  Operand diff_dst, weights, diff_src;
  if (!wrap(&diff_dst, plan->input, params[0], true) || !wrap(&weights, plan->weights, params[1], true) ||
      !wrap(&diff_src, plan->output, params[4], false))
    return 1;
  const dnnl_exec_arg args[3] = {
      {kArgDiffDst, diff_dst.used()}, {kArgWeights, weights.used()}, {kArgDiffSrc, diff_src.used()}};
  if (dnnl_primitive_execute(plan->conv.prim, rt.stream, 3, args) != 0 || !reorder_out(&diff_src, plan->output))
    return 1;
  return dnnl_stream_wait(rt.stream);
}

// 0 when the loaded oneDNN is the one this file was written against (2.x, thread-pool runtime)
// and a convolution can be set up; the Python side checks before using the kernels.
extern "C" int conv_runtime_check() {
  const dnnl_version_info* v = dnnl_version();
  if (v == nullptr || v->major != 2 || v->cpu_runtime != kThreadpoolRuntime) return 1;
  if (!runtime().ok) return 2;
  const int64_t x[4] = {1, 8, 4, 4}, w[4] = {8, 8, 3, 3}, y[4] = {1, 8, 4, 4};
  return find_plan(false, x, w, y, Geometry{{1, 1}, {1, 1}, {1, 1}}) != nullptr ? 0 : 3;
}
