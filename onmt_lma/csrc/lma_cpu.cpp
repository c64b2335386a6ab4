// Fused CPU kernels for LMA (Xu et al. 2020, method section: batch segmentation and per-segment lines): one pass over the input,
// parallel over chunks with ATen's thread pool (OpenMP), segment ids computed on
// the fly (never stored).
//
//   j = clamp(floor((x - mean) / width + k / 2), 0, k - 1),  width = 6 std / k
//   forward:  y = alpha[j] * x + beta[j]
//   backward: dx = g * alpha[j];  dalpha[j] += g * x;  dbeta[j] += g
//
// Two implementations of each pass, chosen at run time:
//   * AVX2 + FMA (float32, k <= 16), when the processor has them: the table
//     lookups alpha[j], beta[j] are in-register permutes (vpermps) and the
//     per-segment sums of the backward are k masked vector sums, so nothing is
//     gathered or scattered;
//   * portable C++ for every other case (float64, float16, bfloat16, k > 16,
//     other processors).
// Both compute the segment position the same way ((x - mean) * inv + k / 2,
// rounded after each operation), so they assign the same segments.
// Arithmetic in float (double for double inputs); per-block sums for dalpha /
// dbeta in float, block totals in double, reduced in a fixed order
// (deterministic).
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include <ATen/Parallel.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define LMA_HAVE_X86 1
#else
#define LMA_HAVE_X86 0
#endif

namespace {

constexpr int64_t kGrain = 1 << 14;
constexpr int64_t kBlock = 512;
constexpr int64_t kMaxVectorSegments = 16;
constexpr int64_t kTables = 4;

// The constants of the segment position (x - mean) * inv + half, clamped to [0, last].
template <typename acc_t>
struct Cuts {
  acc_t mean, inv, half, last;
  Cuts(double mean_, double stddev, int64_t k) {
    double width = std::max(stddev, static_cast<double>(std::numeric_limits<acc_t>::min())) * 6.0 / k;
    mean = static_cast<acc_t>(mean_);
    inv = static_cast<acc_t>(1.0 / width);
    half = static_cast<acc_t>(k) / 2;
    last = static_cast<acc_t>(k - 1);
  }
  // floor() by truncation after clamping; branch-free (NaN positions give 0).
  // Built with -ffp-contract=off: no fused multiply-add, the AVX2 path's rounding.
  inline int32_t segment(acc_t x) const {
    acc_t position = (x - mean) * inv + half;
    position = position > acc_t(0) ? position : acc_t(0);
    position = position < last ? position : last;
    return static_cast<int32_t>(position);
  }
};

// A one-element tensor's value, read directly for float32 / float64 on the CPU
// (item() dispatches, which shows at decoding steps of a few thousand elements).
double scalar_of(const torch::Tensor& t, const char* what) {
  TORCH_CHECK(t.numel() == 1, "LMA kernel: ", what, " must have one element, got ", t.numel());
  if (t.device().is_cpu() && t.scalar_type() == at::kFloat) return *t.data_ptr<float>();
  if (t.device().is_cpu() && t.scalar_type() == at::kDouble) return *t.data_ptr<double>();
  return t.item<double>();
}

// Sum and sum of squares of px[begin, end) into *sum, *squares: per block of
// kBlock elements in 8 independent lanes of acc_t (vectorizable without
// reassociation), block totals in double.
template <typename scalar_t, typename acc_t>
__attribute__((always_inline)) inline void sums_portable(const scalar_t* px, int64_t begin, int64_t end, double* sum,
                                                         double* squares) {
  for (int64_t start = begin; start < end; start += kBlock) {
    const int64_t count = std::min(kBlock, end - start);
    acc_t s[8] = {0}, q[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= count; i += 8) {
      for (int l = 0; l < 8; ++l) {
        const acc_t v = static_cast<acc_t>(px[start + i + l]);
        s[l] += v;
        q[l] += v * v;
      }
    }
    for (; i < count; ++i) {
      const acc_t v = static_cast<acc_t>(px[start + i]);
      s[0] += v;
      q[0] += v * v;
    }
    for (int l = 0; l < 8; ++l) {
      *sum += s[l];
      *squares += q[l];
    }
  }
}

// ----------------------------------------------------------------------------
// Portable implementation
// ----------------------------------------------------------------------------
template <typename scalar_t, typename acc_t>
void forward_portable(const scalar_t* px, scalar_t* py, int64_t begin, int64_t end, const acc_t* pa, const acc_t* pb,
                      const Cuts<acc_t>& cuts) {
  for (int64_t i = begin; i < end; ++i) {
    const acc_t v = static_cast<acc_t>(px[i]);
    const int32_t j = cuts.segment(v);
    py[i] = static_cast<scalar_t>(pa[j] * v + pb[j]);
  }
}

// dx over [begin, end) and, when da / db are given, the per-segment sums added to them.
template <typename scalar_t, typename acc_t>
void backward_portable(const scalar_t* px, const scalar_t* pg, scalar_t* pdx, int64_t begin, int64_t end,
                       const acc_t* pa, int64_t k, const Cuts<acc_t>& cuts, double* da, double* db) {
  std::vector<acc_t> block_da(da ? k : 0), block_db(da ? k : 0);
  for (int64_t start = begin; start < end; start += kBlock) {
    const int64_t stop = std::min(start + kBlock, end);
    std::fill(block_da.begin(), block_da.end(), acc_t(0));
    std::fill(block_db.begin(), block_db.end(), acc_t(0));
    for (int64_t i = start; i < stop; ++i) {
      const acc_t v = static_cast<acc_t>(px[i]);
      const acc_t gi = static_cast<acc_t>(pg[i]);
      const int32_t j = cuts.segment(v);
      if (pdx) pdx[i] = static_cast<scalar_t>(gi * pa[j]);
      if (da) {
        block_da[j] += gi * v;
        block_db[j] += gi;
      }
    }
    if (da) {
      for (int64_t j = 0; j < k; ++j) {
        da[j] += block_da[j];
        db[j] += block_db[j];
      }
    }
  }
}

// ----------------------------------------------------------------------------
// AVX2 + FMA implementation (float32, k <= 16)
// ----------------------------------------------------------------------------
#if LMA_HAVE_X86
bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

#define LMA_AVX2 __attribute__((target("avx2,fma")))

// The 16-entry table as two 8-lane registers.
struct Table {
  __m256 low, high;
};

LMA_AVX2 inline Table load_table(const float* values, int64_t k) {
  alignas(32) float padded[kMaxVectorSegments] = {0};
  std::copy(values, values + k, padded);
  return {_mm256_load_ps(padded), _mm256_load_ps(padded + 8)};
}

// table[j] for the 8 segment ids in j (each in [0, k - 1])
LMA_AVX2 inline __m256 lookup(const Table& table, __m256i j, bool wide) {
  const __m256 low = _mm256_permutevar8x32_ps(table.low, j);
  if (!wide) return low;
  const __m256 high = _mm256_permutevar8x32_ps(table.high, j);
  return _mm256_blendv_ps(low, high, _mm256_castsi256_ps(_mm256_cmpgt_epi32(j, _mm256_set1_epi32(7))));
}

struct VectorCuts {
  __m256 mean, inv, half, last, zero;
};

LMA_AVX2 inline VectorCuts vector_cuts(const Cuts<float>& cuts) {
  return {_mm256_set1_ps(cuts.mean), _mm256_set1_ps(cuts.inv), _mm256_set1_ps(cuts.half),
          _mm256_set1_ps(cuts.last), _mm256_setzero_ps()};
}

LMA_AVX2 inline __m256i segments(__m256 x, const VectorCuts& c) {
  __m256 position = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(x, c.mean), c.inv), c.half);
  position = _mm256_max_ps(position, c.zero);  // NaN -> 0, as the portable path
  position = _mm256_min_ps(position, c.last);
  return _mm256_cvttps_epi32(position);
}

LMA_AVX2 inline double horizontal_sum(__m256 v) {
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, v);
  double total = 0.0;
  for (float lane : lanes) total += lane;
  return total;
}

// Sum and sum of squares as sums_portable, with two 8-lane accumulators each.
LMA_AVX2 void sums_avx2(const float* px, int64_t begin, int64_t end, double* sum, double* squares) {
  int64_t start = begin;
  for (; start + kBlock <= end; start += kBlock) {
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, q0 = s0, q1 = s0;
    for (int64_t i = start; i < start + kBlock; i += 16) {
      const __m256 v0 = _mm256_loadu_ps(px + i), v1 = _mm256_loadu_ps(px + i + 8);
      s0 = _mm256_add_ps(s0, v0);
      s1 = _mm256_add_ps(s1, v1);
      q0 = _mm256_fmadd_ps(v0, v0, q0);
      q1 = _mm256_fmadd_ps(v1, v1, q1);
    }
    *sum += horizontal_sum(_mm256_add_ps(s0, s1));
    *squares += horizontal_sum(_mm256_add_ps(q0, q1));
  }
  sums_portable<float, float>(px, start, end, sum, squares);
}

LMA_AVX2 void forward_avx2(const float* px, float* py, int64_t begin, int64_t end, const float* pa, const float* pb,
                           int64_t k, const Cuts<float>& cuts) {
  const Table alpha = load_table(pa, k), beta = load_table(pb, k);
  const VectorCuts c = vector_cuts(cuts);
  const bool wide = k > 8;
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    const __m256 x = _mm256_loadu_ps(px + i);
    const __m256i j = segments(x, c);
    _mm256_storeu_ps(py + i, _mm256_fmadd_ps(lookup(alpha, j, wide), x, lookup(beta, j, wide)));
  }
  forward_portable<float, float>(px, py, i, end, pa, pb, cuts);
}


LMA_AVX2 void backward_avx2(const float* px, const float* pg, float* pdx, int64_t begin, int64_t end, const float* pa,
                            int64_t k, const Cuts<float>& cuts, double* da, double* db) {
  const Table alpha = load_table(pa, k);
  const VectorCuts c = vector_cuts(cuts);
  const bool wide = k > 8;
  alignas(32) int32_t ids[kBlock];
  alignas(32) float gx[kBlock];
  int64_t start = begin;
  for (; start + kBlock <= end; start += kBlock) {
    // pass 1 over the block: segment ids, dx, g * x (kept in L1 for pass 2)
    for (int64_t i = 0; i < kBlock; i += 8) {
      const __m256 x = _mm256_loadu_ps(px + start + i);
      const __m256 g = _mm256_loadu_ps(pg + start + i);
      const __m256i j = segments(x, c);
      if (pdx) _mm256_storeu_ps(pdx + start + i, _mm256_mul_ps(g, lookup(alpha, j, wide)));
      if (da) {
        _mm256_store_si256(reinterpret_cast<__m256i*>(ids + i), j);
        _mm256_store_ps(gx + i, _mm256_mul_ps(g, x));
      }
    }
    if (!da) continue;
    if (k <= 8) {  // pass 2: per segment, masked vector sums of g * x and g
      for (int64_t s = 0; s < k; ++s) {
        const __m256i segment = _mm256_set1_epi32(static_cast<int32_t>(s));
        __m256 sum_gx = _mm256_setzero_ps(), sum_g = _mm256_setzero_ps();
        for (int64_t i = 0; i < kBlock; i += 8) {
          const __m256 mask = _mm256_castsi256_ps(
              _mm256_cmpeq_epi32(_mm256_load_si256(reinterpret_cast<const __m256i*>(ids + i)), segment));
          sum_gx = _mm256_add_ps(sum_gx, _mm256_and_ps(mask, _mm256_load_ps(gx + i)));
          sum_g = _mm256_add_ps(sum_g, _mm256_and_ps(mask, _mm256_loadu_ps(pg + start + i)));
        }
        da[s] += horizontal_sum(sum_gx);
        db[s] += horizontal_sum(sum_g);
      }
      continue;
    }
    // more segments: a scalar scatter (k-independent cost) into kTables interleaved
    // tables, so that neighbouring elements of one segment do not wait for each other
    float table_gx[kTables][kMaxVectorSegments] = {}, table_g[kTables][kMaxVectorSegments] = {};
    for (int64_t i = 0; i < kBlock; i += kTables) {
      for (int64_t t = 0; t < kTables; ++t) {
        table_gx[t][ids[i + t]] += gx[i + t];
        table_g[t][ids[i + t]] += pg[start + i + t];
      }
    }
    for (int64_t s = 0; s < k; ++s) {
      float sum_gx = 0.0f, sum_g = 0.0f;
      for (int64_t t = 0; t < kTables; ++t) {
        sum_gx += table_gx[t][s];
        sum_g += table_g[t][s];
      }
      da[s] += sum_gx;
      db[s] += sum_g;
    }
  }
  backward_portable<float, float>(px, pg, pdx, start, end, pa, k, cuts, da, db);
}
#else
bool cpu_has_avx2() { return false; }
#endif

template <typename scalar_t>
bool vectorized(int64_t k) {
  return std::is_same<scalar_t, float>::value && k <= kMaxVectorSegments && cpu_has_avx2();
}

// The AVX2 path where it applies (returns true), else nothing (returns false).
template <typename scalar_t, typename acc_t>
bool forward_vector(const scalar_t*, scalar_t*, int64_t, int64_t, const acc_t*, const acc_t*, int64_t,
                    const Cuts<acc_t>&) {
  return false;
}
template <typename scalar_t, typename acc_t>
bool backward_vector(const scalar_t*, const scalar_t*, scalar_t*, int64_t, int64_t, const acc_t*, int64_t,
                     const Cuts<acc_t>&, double*, double*) {
  return false;
}
template <typename scalar_t>
bool sums_vector(const scalar_t*, int64_t, int64_t, double*, double*) {
  return false;
}
#if LMA_HAVE_X86
bool forward_vector(const float* px, float* py, int64_t begin, int64_t end, const float* pa, const float* pb, int64_t k,
                    const Cuts<float>& cuts) {
  if (!vectorized<float>(k)) return false;
  forward_avx2(px, py, begin, end, pa, pb, k, cuts);
  return true;
}
bool backward_vector(const float* px, const float* pg, float* pdx, int64_t begin, int64_t end, const float* pa,
                     int64_t k, const Cuts<float>& cuts, double* da, double* db) {
  if (!vectorized<float>(k)) return false;
  backward_avx2(px, pg, pdx, begin, end, pa, k, cuts, da, db);
  return true;
}
bool sums_vector(const float* px, int64_t begin, int64_t end, double* sum, double* squares) {
  if (!vectorized<float>(1)) return false;
  sums_avx2(px, begin, end, sum, squares);
  return true;
}
#endif

}  // namespace

torch::Tensor lma_forward(torch::Tensor x, torch::Tensor alpha, torch::Tensor beta, torch::Tensor mean_t,
                          torch::Tensor std_t) {
  TORCH_CHECK(x.device().is_cpu(), "lma_forward: CPU tensors only");
  const double mean = scalar_of(mean_t, "mean"), stddev = scalar_of(std_t, "std");
  auto input = x.contiguous();
  auto out = torch::empty_like(input);
  const int64_t n = input.numel();
  const int64_t k = alpha.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "lma_forward", [&] {
    using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    auto a = alpha.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    auto b = beta.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* pa = a.data_ptr<acc_t>();
    const acc_t* pb = b.data_ptr<acc_t>();
    const scalar_t* px = input.data_ptr<scalar_t>();
    scalar_t* py = out.data_ptr<scalar_t>();
    const Cuts<acc_t> cuts(mean, stddev, k);
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      if (!forward_vector(px, py, begin, end, pa, pb, k, cuts))
        forward_portable<scalar_t, acc_t>(px, py, begin, end, pa, pb, cuts);
    });
  });
  return out;  // contiguous, with x's sizes
}

std::vector<torch::Tensor> lma_backward(torch::Tensor grad, torch::Tensor x, torch::Tensor alpha,
                                        torch::Tensor mean_t, torch::Tensor std_t, bool need_x, bool need_params) {
  const double mean = scalar_of(mean_t, "mean"), stddev = scalar_of(std_t, "std");
  auto input = x.contiguous();
  auto g = grad.to(x.scalar_type()).contiguous();
  const int64_t n = input.numel();
  const int64_t k = alpha.numel();
  torch::Tensor grad_x = need_x ? torch::empty_like(input) : torch::Tensor();
  torch::Tensor grad_alpha, grad_beta;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "lma_backward", [&] {
    using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    auto a = alpha.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* pa = a.data_ptr<acc_t>();
    const scalar_t* px = input.data_ptr<scalar_t>();
    const scalar_t* pg = g.data_ptr<scalar_t>();
    scalar_t* pdx = need_x ? grad_x.data_ptr<scalar_t>() : nullptr;
    const Cuts<acc_t> cuts(mean, stddev, k);
    const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads() * 4, (n + kGrain - 1) / kGrain));
    const int64_t per_chunk = ((n + chunks - 1) / chunks + kBlock - 1) / kBlock * kBlock;
    // partial sums per chunk (deterministic reduction order): [chunk][2k]
    std::vector<double> partial(need_params ? chunks * 2 * k : 0, 0.0);
    at::parallel_for(0, chunks, 1, [&](int64_t c_begin, int64_t c_end) {
      for (int64_t c = c_begin; c < c_end; ++c) {
        const int64_t begin = std::min(n, c * per_chunk);
        const int64_t end = std::min(n, begin + per_chunk);
        // sums in this thread's own memory (no false sharing), copied out at the end
        double sums[2 * kMaxVectorSegments] = {0};
        std::vector<double> wide_sums(need_params && k > kMaxVectorSegments ? 2 * k : 0, 0.0);
        double* da = need_params ? (wide_sums.empty() ? sums : wide_sums.data()) : nullptr;
        double* db = need_params ? da + k : nullptr;
        if (!backward_vector(px, pg, pdx, begin, end, pa, k, cuts, da, db))
          backward_portable<scalar_t, acc_t>(px, pg, pdx, begin, end, pa, k, cuts, da, db);
        if (need_params) std::copy(da, da + 2 * k, partial.begin() + c * 2 * k);
      }
    });
    if (need_params) {
      auto sums = torch::zeros({2, k}, torch::kFloat64);
      double* ps = sums.data_ptr<double>();
      for (int64_t c = 0; c < chunks; ++c)
        for (int64_t j = 0; j < 2 * k; ++j) ps[j] += partial[c * 2 * k + j];
      grad_alpha = sums[0].to(alpha.scalar_type());
      grad_beta = sums[1].to(alpha.scalar_type());
    }
  });
  return {grad_x, grad_alpha, grad_beta};
}

// Mean and population standard deviation of all elements, one pass.
std::vector<double> lma_stats(torch::Tensor x) {
  auto input = x.contiguous();
  const int64_t n = input.numel();
  TORCH_CHECK(n > 0, "lma_stats: empty input");
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads() * 4, (n + kGrain - 1) / kGrain));
  const int64_t per_chunk = (n + chunks - 1) / chunks;
  std::vector<double> partial(chunks * 2, 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "lma_stats", [&] {
    using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    const scalar_t* px = input.data_ptr<scalar_t>();
    at::parallel_for(0, chunks, 1, [&](int64_t c_begin, int64_t c_end) {
      for (int64_t c = c_begin; c < c_end; ++c) {
        const int64_t begin = std::min(n, c * per_chunk);
        const int64_t end = std::min(n, begin + per_chunk);
        double sum = 0.0, squares = 0.0;  // this thread's own (no false sharing)
        if (!sums_vector(px, begin, end, &sum, &squares)) sums_portable<scalar_t, acc_t>(px, begin, end, &sum, &squares);
        partial[2 * c] = sum;
        partial[2 * c + 1] = squares;
      }
    });
  });
  double sum = 0.0, squares = 0.0;
  for (int64_t c = 0; c < chunks; ++c) {
    sum += partial[2 * c];
    squares += partial[2 * c + 1];
  }
  const double mean = sum / n;
  const double variance = std::max(squares / n - mean * mean, 0.0);
  return {mean, std::sqrt(variance)};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("stats", &lma_stats, "mean and population std of all elements (CPU, one pass)");
  m.def("forward", &lma_forward, "LMA forward (CPU, fused)");
  m.def("backward", &lma_backward, "LMA backward (CPU, fused)");
#ifdef LMA_SOURCE_SHA256
  m.attr("source_sha256") = LMA_SOURCE_SHA256;  // set by setup.py
#endif
  m.def("vectorized", [](int64_t k) { return vectorized<float>(k); },
        "whether float32 inputs with k segments take the AVX2 path on this processor");
}
