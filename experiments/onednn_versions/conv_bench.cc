// Times oneDNN 2-D convolution (fwd, bwd-data, bwd-weights) in f32 and bf16, NHWC activations, weights any,
// user scratchpad, prop forward_training. Compiles against oneDNN 2.x and 3.x.
// Usage: ./bench [geometry_index]   (default: all)
#include <oneapi/dnnl/dnnl.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <unordered_map>
#include <vector>
using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;
using args_t = std::unordered_map<int, memory>;

static engine eng(engine::kind::cpu, 0);
static stream strm(eng);

// Fills `m` (any layout/type) with small pseudo-random values via an f32 plain reorder.
static void fill(memory& m, unsigned seed) {
  const memory::desc& d = m.get_desc();
#if DNNL_VERSION_MAJOR >= 3
  memory::dims dims = d.get_dims();
#else
  memory::dims dims = d.dims();
#endif
  tag t = dims.size() == 4 ? tag::abcd : tag::a;
  memory::desc pd(dims, dt::f32, t);
  memory p(pd, eng);
  float* f = static_cast<float*>(p.get_data_handle());
  size_t n = pd.get_size() / sizeof(float);
  unsigned s = seed * 2654435761u + 1;
  for (size_t i = 0; i < n; ++i) { s = s * 1664525u + 1013904223u; f[i] = ((s >> 9) * (1.0f / 8388608.0f)) - 0.5f; }
  reorder(p, m).execute(strm, p, m);
  strm.wait();
}

static double time_prim(primitive& prim, args_t& args) {
  for (int i = 0; i < 5; ++i) prim.execute(strm, args);
  strm.wait();
  std::vector<double> r;
  for (int rep = 0; rep < 5; ++rep) {
    auto t = std::chrono::steady_clock::now();
    for (int i = 0; i < 20; ++i) prim.execute(strm, args);
    strm.wait();
    r.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count() / 20);
  }
  std::sort(r.begin(), r.end());
  return r[2];
}

struct G { int N, IC, OC, H, K; };

int main(int argc, char** argv) {
  std::vector<G> geoms{{100, 1, 16, 28, 5}, {100, 16, 32, 14, 5}, {128, 64, 64, 32, 3},
                       {128, 128, 128, 16, 3}, {128, 3, 64, 32, 3}, {128, 192, 64, 14, 1}};
  int only = argc > 1 ? atoi(argv[1]) : -1;
  const dnnl_version_t* v = dnnl_version();
  printf("# oneDNN %d.%d.%d cpu_runtime=%s\n", v->major, v->minor, v->patch,
         v->cpu_runtime == DNNL_RUNTIME_OMP ? "OMP" : v->cpu_runtime == DNNL_RUNTIME_TBB ? "TBB" : v->cpu_runtime == 512u /*DNNL_RUNTIME_SYCL*/ ? "SYCL" : "other");
  auto algo = algorithm::convolution_direct;
  primitive_attr attr;
  attr.set_scratchpad_mode(scratchpad_mode::user);
  for (int gi = 0; gi < (int)geoms.size(); ++gi) {
    if (only >= 0 && gi != only) continue;
    G g = geoms[gi];
    int P = g.K / 2;
    memory::dims src{g.N, g.IC, g.H, g.H}, wei{g.OC, g.IC, g.K, g.K}, dst{g.N, g.OC, g.H, g.H}, st{1, 1}, pad{P, P};
    // variant 0: f32; 1: bf16; 2: bf16 with f32 diff_weights (bwd-weights only)
    for (int variant = 0; variant < 3; ++variant) {
      dt a = variant == 0 ? dt::f32 : dt::bf16;
      const char* vname = variant == 0 ? "f32" : variant == 1 ? "bf16" : "bf16_dwf32";
      memory::desc sd(src, a, tag::nhwc), wd(wei, a, tag::any), dd(dst, a, tag::nhwc);
      memory::desc dwd(wei, variant == 2 ? dt::f32 : a, tag::any);
#if DNNL_VERSION_MAJOR >= 3
      convolution_forward::primitive_desc fpd(eng, prop_kind::forward_training, algo, sd, wd, dd, st, pad, pad, attr);
#else
      convolution_forward::primitive_desc fpd(
          convolution_forward::desc(prop_kind::forward_training, algo, sd, wd, dd, st, pad, pad), attr, eng);
#endif
      for (int dir = 0; dir < 3; ++dir) {
        if (variant == 2 && dir != 2) continue;
        const char* dname = dir == 0 ? "fwd" : dir == 1 ? "bwd_d" : "bwd_w";
        primitive prim;
        args_t args;
        std::string impl;
        memory scratch;
        if (dir == 0) {
          memory S(fpd.src_desc(), eng), W(fpd.weights_desc(), eng), D(fpd.dst_desc(), eng);
          fill(S, 1), fill(W, 2);
          prim = convolution_forward(fpd);
          scratch = memory(fpd.scratchpad_desc(), eng);
          args = {{DNNL_ARG_SRC, S}, {DNNL_ARG_WEIGHTS, W}, {DNNL_ARG_DST, D}};
          impl = fpd.impl_info_str();
        } else if (dir == 1) {
#if DNNL_VERSION_MAJOR >= 3
          convolution_backward_data::primitive_desc pd(eng, algo, sd, wd, dd, st, pad, pad, fpd, attr);
#else
          convolution_backward_data::primitive_desc pd(
              convolution_backward_data::desc(algo, sd, wd, dd, st, pad, pad), attr, eng, fpd);
#endif
          memory S(pd.diff_src_desc(), eng), W(pd.weights_desc(), eng), D(pd.diff_dst_desc(), eng);
          fill(W, 2), fill(D, 3);
          prim = convolution_backward_data(pd);
          scratch = memory(pd.scratchpad_desc(), eng);
          args = {{DNNL_ARG_DIFF_SRC, S}, {DNNL_ARG_WEIGHTS, W}, {DNNL_ARG_DIFF_DST, D}};
          impl = pd.impl_info_str();
        } else {
#if DNNL_VERSION_MAJOR >= 3
          convolution_backward_weights::primitive_desc pd(eng, algo, sd, dwd, dd, st, pad, pad, fpd, attr);
#else
          convolution_backward_weights::primitive_desc pd(
              convolution_backward_weights::desc(algo, sd, dwd, dd, st, pad, pad), attr, eng, fpd);
#endif
          memory S(pd.src_desc(), eng), W(pd.diff_weights_desc(), eng), D(pd.diff_dst_desc(), eng);
          fill(S, 1), fill(D, 3);
          prim = convolution_backward_weights(pd);
          scratch = memory(pd.scratchpad_desc(), eng);
          args = {{DNNL_ARG_SRC, S}, {DNNL_ARG_DIFF_WEIGHTS, W}, {DNNL_ARG_DIFF_DST, D}};
          impl = pd.impl_info_str();
        }
        args.insert({DNNL_ARG_SCRATCHPAD, scratch});
        double ms = time_prim(prim, args);
        printf("%d,%d,%d,%d,%d\t%s\t%s\t%.3f\t%s\n", g.N, g.IC, g.OC, g.H, g.K, vname, dname, ms, impl.c_str());
        fflush(stdout);
      }
    }
  }
}
