// ConvMixer's depthwise half-block as one OpenVINO operation:
//     y = x + scale[c] * gelu(depthwise_conv(x)[c] + bias[c]) + shift[c]
// (a k x k depthwise convolution with "same" zero padding, exact erf GELU, the folded BatchNorm, the residual).
//
// Why: in the int8 model OpenVINO runs these convolutions with oneDNN's int8 depthwise kernel at a few percent
// of the machine's int8 rate (docs/precision-runtimes.md). This kernel computes them in bf16 products with fp32
// sums (AVX512-BF16 vdpbf16ps: two taps per lane and instruction), or in fp32 FMA (AVX2), and fuses everything
// up to the residual sum into one pass over the feature map. OpenVINO hands a custom operation plain NCHW
// tensors and converts its own layouts around it; runtime_compare measures that cost apart ("copy").
//
// Inputs: x [N, C, H, W] f32, taps [C, k, k] f32, bias [C], scale [C], shift [C] (all f32).
// Attributes: isa "avx512_bf16" or "avx2" (the caller picks it from the CPU it detected); compute "block", or
// "copy" (y = x: the graph's cost with the half-block free, for measurement only).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <openvino/core/extension.hpp>
#include <openvino/core/op_extension.hpp>
#include <openvino/core/parallel.hpp>
#include <openvino/op/op.hpp>

#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

namespace {

struct Plane {
    const float* x;       // H x W input plane
    float* y;             // H x W output plane
    const float* w;       // k x k taps
    float bias, scale, shift;
};

struct Geometry {
    int64_t H, W, k;
};

// ---- exact GELU: 0.5 v (1 + erf(v / sqrt 2)), erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7) ----
constexpr float kErfP = 0.3275911f;
constexpr float kErfA1 = 0.254829592f, kErfA2 = -0.284496736f, kErfA3 = 1.421413741f;
constexpr float kErfA4 = -1.453152027f, kErfA5 = 1.061405429f;
constexpr float kInvSqrt2 = 0.70710678118654752f;

__attribute__((target("avx2,fma"))) inline __m256 exp_neg_avx2(__m256 z) {  // exp(-z), z >= 0
    const __m256 x = _mm256_max_ps(_mm256_sub_ps(_mm256_setzero_ps(), z), _mm256_set1_ps(-87.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

__attribute__((target("avx2,fma"))) inline __m256 gelu_avx2(__m256 v) {
    const __m256 sign_mask = _mm256_set1_ps(-0.0f);
    const __m256 u = _mm256_mul_ps(v, _mm256_set1_ps(kInvSqrt2));
    const __m256 a = _mm256_andnot_ps(sign_mask, u);
    const __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_fmadd_ps(a, _mm256_set1_ps(kErfP), _mm256_set1_ps(1.0f)));
    __m256 q = _mm256_set1_ps(kErfA5);
    q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(kErfA4));
    q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(kErfA3));
    q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(kErfA2));
    q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(kErfA1));
    q = _mm256_mul_ps(q, t);
    const __m256 erf_abs = _mm256_fnmadd_ps(q, exp_neg_avx2(_mm256_mul_ps(a, a)), _mm256_set1_ps(1.0f));
    const __m256 erf = _mm256_or_ps(erf_abs, _mm256_and_ps(sign_mask, u));
    return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), v), _mm256_add_ps(_mm256_set1_ps(1.0f), erf));
}

BF16_TARGET inline __m512 gelu_avx512(__m512 v) {
    const __m512 u = _mm512_mul_ps(v, _mm512_set1_ps(kInvSqrt2));
    const __m512 a = _mm512_abs_ps(u);
    const __m512 t = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_fmadd_ps(a, _mm512_set1_ps(kErfP), _mm512_set1_ps(1.0f)));
    __m512 q = _mm512_set1_ps(kErfA5);
    q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(kErfA4));
    q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(kErfA3));
    q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(kErfA2));
    q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(kErfA1));
    q = _mm512_mul_ps(q, t);
    // exp(-a^2): round to a power of two and a polynomial on the remainder, scaled back by scalef.
    const __m512 x = _mm512_max_ps(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(a, a)), _mm512_set1_ps(-87.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    const __m512 erf_abs = _mm512_fnmadd_ps(q, _mm512_scalef_ps(p, n), _mm512_set1_ps(1.0f));
    const __m512 erf = _mm512_castsi512_ps(_mm512_or_si512(
        _mm512_castps_si512(erf_abs), _mm512_and_si512(_mm512_castps_si512(u), _mm512_set1_epi32(INT32_MIN))));
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), v), _mm512_add_ps(_mm512_set1_ps(1.0f), erf));
}

// ---- AVX2 path: fp32 FMA, 8 outputs a vector; tiles of kAvx2Rows rows x up to 4 vectors stay in registers ----
constexpr int kAvx2Rows = 3;

class Avx2Kernel {
public:
    explicit Avx2Kernel(const Geometry& g)
        : g_(g), pad_(g.k / 2), stride_((g.W + 31) / 32 * 32 + g.k - 1 + 8),
          padded_((g.H + g.k - 1) * stride_, 0.0f) {}

    __attribute__((target("avx2,fma"))) void run(const Plane& p) {
        for (int64_t r = 0; r < g_.H; ++r)
            std::memcpy(&padded_[(r + pad_) * stride_ + pad_], p.x + r * g_.W, g_.W * sizeof(float));
        for (int64_t x0 = 0; x0 < g_.W; x0 += 32) {
            switch (std::min<int64_t>(4, (g_.W - x0 + 7) / 8)) {
                case 1: rows_of<1>(p, x0); break;
                case 2: rows_of<2>(p, x0); break;
                case 3: rows_of<3>(p, x0); break;
                default: rows_of<4>(p, x0); break;
            }
        }
    }

private:
    template <int Blocks>
    __attribute__((target("avx2,fma"))) void rows_of(const Plane& p, int64_t x0) {
        int64_t y0 = 0;
        for (; y0 + kAvx2Rows <= g_.H; y0 += kAvx2Rows) tile<Blocks, kAvx2Rows>(p, y0, x0);
        for (; y0 < g_.H; ++y0) tile<Blocks, 1>(p, y0, x0);
    }

    template <int Blocks, int Rows>
    __attribute__((target("avx2,fma"))) void tile(const Plane& p, int64_t y0, int64_t x0) {
        __m256 acc[Rows][Blocks];
        for (int r = 0; r < Rows; ++r)
            for (int b = 0; b < Blocks; ++b) acc[r][b] = _mm256_set1_ps(p.bias);
        for (int64_t i = 0; i < g_.k; ++i)
            for (int64_t j = 0; j < g_.k; ++j) {
                const __m256 w = _mm256_set1_ps(p.w[i * g_.k + j]);
                _Pragma("GCC unroll 4") for (int r = 0; r < Rows; ++r) {
                    const float* row = &padded_[(y0 + r + i) * stride_ + x0 + j];
                    _Pragma("GCC unroll 4") for (int b = 0; b < Blocks; ++b)
                        acc[r][b] = _mm256_fmadd_ps(w, _mm256_loadu_ps(row + 8 * b), acc[r][b]);
                }
            }
        const __m256 scale = _mm256_set1_ps(p.scale), shift = _mm256_set1_ps(p.shift);
        for (int r = 0; r < Rows; ++r)
            for (int b = 0; b < Blocks; ++b) {
                const int64_t x = x0 + 8 * b, n = std::min<int64_t>(8, g_.W - x), at = (y0 + r) * g_.W + x;
                alignas(32) float lanes[8] = {0};
                std::memcpy(lanes, p.x + at, n * sizeof(float));
                const __m256 v = _mm256_fmadd_ps(scale, gelu_avx2(acc[r][b]), shift);
                _mm256_store_ps(lanes, _mm256_add_ps(v, _mm256_load_ps(lanes)));
                std::memcpy(p.y + at, lanes, n * sizeof(float));
            }
    }

    Geometry g_;
    int64_t pad_, stride_;
    std::vector<float> padded_;  // the zero-padded plane
};

// ---- AVX512-BF16 path: vdpbf16ps sums two vertical taps per fp32 lane; 16 outputs a vector ----
// The padded plane is kept as "row pairs": lane x of pair row r holds the bf16 pair (plane[r][x], plane[r+1][x]).
// Tap column j of tap rows (2p, 2p+1) for outputs x0..x0+15 of row y is then one unaligned load at pair row
// y + 2p, column x0 + j, against the broadcast pair (w[2p][j], w[2p+1][j]); each load serves every output row
// of the tile that needs it. k * (k + 1) / 2 vdpbf16ps per 16 outputs, against k * k FMAs in fp32.
class Bf16Kernel {
public:
    explicit Bf16Kernel(const Geometry& g)
        : g_(g), pad_(g.k / 2), pairs_((g.k + 1) / 2), blocks_((g.W + 15) / 16),
          stride_((blocks_ * 16 + g.k - 1 + 15) / 16 * 16), plane_((g.H + g.k) * stride_, 0),
          pair_rows_((g.H + g.k - 1) * stride_, 0), tap_pairs_(pairs_ * g.k) {}

    static bool fits(const Geometry& g) {
        return (g.k == 3 || g.k == 5 || g.k == 7 || g.k == 9) && (g.W + 15) / 16 <= 4;
    }

    BF16_TARGET void run(const Plane& p) {
        pack_taps(p.w);
        pack_rows(p.x);
        switch (g_.k) {
            case 3: by_blocks<3>(p); break;
            case 5: by_blocks<5>(p); break;
            case 7: by_blocks<7>(p); break;
            default: by_blocks<9>(p); break;
        }
    }

private:
    static uint32_t to_bf16(float f) {  // round to nearest even, as vcvtneps2bf16 (weights are finite)
        uint32_t u;
        std::memcpy(&u, &f, 4);
        return (u + 0x7FFF + ((u >> 16) & 1)) >> 16;
    }

    void pack_taps(const float* w) {
        const int64_t k = g_.k;
        for (int64_t q = 0; q < pairs_; ++q)
            for (int64_t j = 0; j < k; ++j) {
                const uint32_t lo = to_bf16(w[2 * q * k + j]);
                const uint32_t hi = 2 * q + 1 < k ? to_bf16(w[(2 * q + 1) * k + j]) : 0;
                tap_pairs_[q * k + j] = lo | (hi << 16);
            }
    }

    BF16_TARGET void pack_rows(const float* x) {
        const int64_t H = g_.H, W = g_.W;
        for (int64_t r = 0; r < H; ++r) {
            uint16_t* dst = &plane_[(r + pad_) * stride_ + pad_];
            for (int64_t x0 = 0; x0 < W; x0 += 16) {
                const __mmask16 m = static_cast<__mmask16>((1u << std::min<int64_t>(16, W - x0)) - 1);
                const __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, x + r * W + x0));
                _mm256_mask_storeu_epi16(dst + x0, m, (__m256i)v);
            }
        }
        const int64_t rows = H + g_.k - 1;
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t x0 = 0; x0 < stride_; x0 += 16) {
                const __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)&plane_[r * stride_ + x0]));
                const __m512i hi = _mm512_cvtepu16_epi32(
                    _mm256_loadu_si256((const __m256i*)&plane_[(r + 1) * stride_ + x0]));
                _mm512_storeu_si512(&pair_rows_[r * stride_ + x0], _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
            }
    }

    template <int K>
    BF16_TARGET void by_blocks(const Plane& p) {
        switch (blocks_) {
            case 1: rows_of<K, 1, 8>(p); break;
            case 2: rows_of<K, 2, 8>(p); break;
            case 3: rows_of<K, 3, 5>(p); break;
            default: rows_of<K, 4, 4>(p); break;
        }
    }

    template <int K, int Blocks, int Rows>
    BF16_TARGET void rows_of(const Plane& p) {
        int64_t y0 = 0;
        for (; y0 + Rows <= g_.H; y0 += Rows) tile<K, Blocks, Rows>(p, y0);
        for (; y0 < g_.H; ++y0) tile<K, Blocks, 1>(p, y0);
    }

    template <int K, int Blocks, int Rows>
    BF16_TARGET void tile(const Plane& p, int64_t y0) {
        constexpr int Pairs = (K + 1) / 2;
        __m512 acc[Rows][Blocks];
        for (int r = 0; r < Rows; ++r)
            for (int b = 0; b < Blocks; ++b) acc[r][b] = _mm512_set1_ps(p.bias);
        for (int j = 0; j < K; ++j) {
            __m512bh taps[Pairs];
            for (int q = 0; q < Pairs; ++q) taps[q] = (__m512bh)_mm512_set1_epi32(tap_pairs_[q * K + j]);
            _Pragma("GCC unroll 32") for (int t = 0; t < Rows + 2 * Pairs - 2; ++t)
                _Pragma("GCC unroll 4") for (int b = 0; b < Blocks; ++b) {
                    const __m512bh a = (__m512bh)_mm512_loadu_si512(&pair_rows_[(y0 + t) * stride_ + b * 16 + j]);
                    _Pragma("GCC unroll 8") for (int q = 0; q < Pairs; ++q) {
                        const int r = t - 2 * q;
                        if (r >= 0 && r < Rows) acc[r][b] = _mm512_dpbf16_ps(acc[r][b], a, taps[q]);
                    }
                }
        }
        const __m512 scale = _mm512_set1_ps(p.scale), shift = _mm512_set1_ps(p.shift);
        for (int r = 0; r < Rows; ++r)
            for (int b = 0; b < Blocks; ++b) {
                const int64_t x0 = b * 16, offset = (y0 + r) * g_.W + x0;
                const __mmask16 m = static_cast<__mmask16>((1u << std::min<int64_t>(16, g_.W - x0)) - 1);
                const __m512 v = _mm512_fmadd_ps(scale, gelu_avx512(acc[r][b]), shift);
                _mm512_mask_storeu_ps(p.y + offset, m, _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, p.x + offset)));
            }
    }

    Geometry g_;
    int64_t pad_, pairs_, blocks_, stride_;
    std::vector<uint16_t> plane_;                // the zero-padded bf16 plane, one spare zero row at the bottom
    std::vector<uint32_t> pair_rows_, tap_pairs_;  // two bf16 in each 32-bit element
};

// The next plane's input and output lines are requested while this plane is computed: a plane is only a
// few KB and takes about a microsecond, too short for the hardware prefetchers to run ahead on their own.
inline void prefetch_plane(const float* x, float* y, int64_t size) {
    for (int64_t i = 0; i < size; i += 16) {
        __builtin_prefetch(x + i, 0, 3);
        __builtin_prefetch(y + i, 1, 3);
    }
}

template <class Kernel>
void run_planes(const Geometry& g, int64_t planes, int64_t channels, const float* x, float* y, const float* w,
                const float* bias, const float* scale, const float* shift) {
    const int64_t plane_size = g.H * g.W;
    // OpenVINO's own thread pool: its arena holds the inference's threads, which are idle while this node runs.
    ov::parallel_nt(0, [&](const int thread, const int threads) {
        const int64_t begin = planes * thread / threads, end = planes * (thread + 1) / threads;
        Kernel kernel(g);
        for (int64_t n = begin; n < end; ++n) {
            if (n + 1 < end) prefetch_plane(x + (n + 1) * plane_size, y + (n + 1) * plane_size, plane_size);
            const int64_t c = n % channels;
            kernel.run(Plane{x + n * plane_size, y + n * plane_size, w + c * g.k * g.k, bias[c], scale[c], shift[c]});
        }
    });
}

bool has_bf16_kernel_isa() {
    return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
}

}  // namespace

class DepthwiseBlock : public ov::op::Op {
public:
    OPENVINO_OP("ConvMixerDepthwiseBlock", "convmixer");

    DepthwiseBlock() = default;
    DepthwiseBlock(const ov::OutputVector& args, std::string isa, std::string compute)
        : Op(args), m_isa(std::move(isa)), m_compute(std::move(compute)) {
        constructor_validate_and_infer_types();
    }

    void validate_and_infer_types() override {
        NODE_VALIDATION_CHECK(this, get_input_size() == 5, "expects x, taps, bias, scale, shift");
        for (size_t i = 0; i < 5; ++i)
            NODE_VALIDATION_CHECK(this, get_input_element_type(i) == ov::element::f32, "input ", i, " is not f32");
        NODE_VALIDATION_CHECK(this, m_isa == "avx512_bf16" || m_isa == "avx2", "isa must be avx512_bf16 or avx2");
        NODE_VALIDATION_CHECK(this, m_compute == "block" || m_compute == "copy", "compute must be block or copy");
        const auto& x = get_input_partial_shape(0);
        const auto& w = get_input_partial_shape(1);
        NODE_VALIDATION_CHECK(this, x.rank().is_dynamic() || x.size() == 4, "x must be [N, C, H, W]");
        if (w.is_static())
            NODE_VALIDATION_CHECK(this, w.size() == 3 && w[1] == w[2] && w[1].get_length() % 2 == 1,
                                  "taps must be [C, k, k] with k odd");
        set_output_type(0, ov::element::f32, x);
    }

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& new_args) const override {
        return std::make_shared<DepthwiseBlock>(new_args, m_isa, m_compute);
    }

    bool visit_attributes(ov::AttributeVisitor& visitor) override {
        visitor.on_attribute("isa", m_isa);
        visitor.on_attribute("compute", m_compute);
        return true;
    }

    bool has_evaluate() const override { return true; }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
        const ov::Shape shape = inputs[0].get_shape();
        const ov::Shape taps = inputs[1].get_shape();
        OPENVINO_ASSERT(shape.size() == 4 && taps.size() == 3 && taps[0] == shape[1],
                        "ConvMixerDepthwiseBlock: the taps are not one k x k per channel");
        outputs[0].set_shape(shape);
        const float* x = inputs[0].data<const float>();
        float* y = outputs[0].data<float>();
        if (m_compute == "copy") {
            std::memcpy(y, x, inputs[0].get_byte_size());
            return true;
        }
        const Geometry g{static_cast<int64_t>(shape[2]), static_cast<int64_t>(shape[3]), static_cast<int64_t>(taps[1])};
        const int64_t channels = static_cast<int64_t>(shape[1]), planes = static_cast<int64_t>(shape[0]) * channels;
        const float* w = inputs[1].data<const float>();
        const float* bias = inputs[2].data<const float>();
        const float* scale = inputs[3].data<const float>();
        const float* shift = inputs[4].data<const float>();
        if (m_isa == "avx512_bf16" && Bf16Kernel::fits(g)) {
            OPENVINO_ASSERT(has_bf16_kernel_isa(), "ConvMixerDepthwiseBlock: isa avx512_bf16 on a CPU without it");
            run_planes<Bf16Kernel>(g, planes, channels, x, y, w, bias, scale, shift);
        } else {
            OPENVINO_ASSERT(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"),
                            "ConvMixerDepthwiseBlock: a CPU without AVX2 and FMA");
            run_planes<Avx2Kernel>(g, planes, channels, x, y, w, bias, scale, shift);
        }
        return true;
    }

private:
    std::string m_isa = "avx2";
    std::string m_compute = "block";
};

OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>({std::make_shared<ov::OpExtension<DepthwiseBlock>>()}));
