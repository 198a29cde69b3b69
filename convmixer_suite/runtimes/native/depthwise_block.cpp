// ConvMixer's depthwise half-block as one OpenVINO operation, on channels-last tensors:
//     x = input + pre[c]
//     y = x + scale[c] * gelu(depthwise_conv(x)[c] + bias[c]) + shift[c]
// (a k x k depthwise convolution with "same" zero padding, exact erf GELU, the folded BatchNorm and the residual;
// `pre` is the shift of the BatchNorm before it, folded in here).
//
// Why: in the int8 model OpenVINO runs these convolutions with oneDNN's int8 depthwise kernel at a few percent
// of the machine's rate (docs/precision-runtimes.md). This kernel runs them in fp32 FMA with the taps and a run of
// outputs in registers, and fuses everything from the previous BatchNorm's shift to the residual sum into one
// pass. Channels last because a custom operation gets plain tensors: [N, H, W, C] plain is also the layout the
// int8 matrix products around it use, so OpenVINO converts nothing between them.
//
// Inputs: x [N, H, W, C] f32 with C a multiple of 16, taps [k, k, C] f32 with k 3, 5, 7 or 9, bias, scale, shift,
// pre [C] f32. Attributes: isa "avx512" or "avx2" (the caller picks it from the CPU it detected); compute "block",
// or "copy" (y = x: the model's cost with the half-blocks free, for measurement only).
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <new>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <openvino/core/extension.hpp>
#include <openvino/core/op_extension.hpp>
#include <openvino/core/parallel.hpp>
#include <openvino/op/op.hpp>

namespace convmixer {
// A zero-filled buffer on 64-byte boundaries: the kernels' 64-byte loads then never straddle two cache lines.
template <class T>
class Aligned {
public:
    explicit Aligned(size_t count, T fill = T())
        : size_(count), data_(static_cast<T*>(std::aligned_alloc(64, (count * sizeof(T) + 63) / 64 * 64))) {
        if (!data_) throw std::bad_alloc();
        std::fill(data_.get(), data_.get() + count, fill);
    }
    T* begin() { return data_.get(); }
    T* end() { return data_.get() + size_; }
    T& operator[](size_t i) { return data_.get()[i]; }
    const T& operator[](size_t i) const { return data_.get()[i]; }

private:
    struct Free {
        void operator()(T* p) const { std::free(p); }
    };
    size_t size_;
    std::unique_ptr<T, Free> data_;
};
}  // namespace convmixer
using convmixer::Aligned;

namespace {
// erf by Abramowitz & Stegun 7.1.28: 1 - (1 + a1 x + ... + a6 x^6)^-16 for x >= 0, |error| < 3e-7.
constexpr float kErf[6] = {0.0705230784f, 0.0422820123f, 0.0092705272f, 0.0001520143f, 0.0002765672f, 0.0000430638f};
constexpr float kInvSqrt2 = 0.70710678118654752f;
}  // namespace

// The float vector operations the kernel uses, the same for every width: VECTOR_OPS(type, lanes, intrinsic prefix).
#define VECTOR_OPS(TYPE, LANES, P)                                                  \
    using T = TYPE;                                                                 \
    static constexpr int L = LANES;                                                 \
    static T load(const float* p) { return P##_loadu_ps(p); }                       \
    static void store(float* p, T v) { P##_storeu_ps(p, v); }                       \
    static T set1(float f) { return P##_set1_ps(f); }                               \
    static T fma(T a, T b, T c) { return P##_fmadd_ps(a, b, c); }                   \
    static T add(T a, T b) { return P##_add_ps(a, b); }                             \
    static T mul(T a, T b) { return P##_mul_ps(a, b); }                             \
    static T div(T a, T b) { return P##_div_ps(a, b); }

#pragma GCC push_options
#pragma GCC target("avx512f,fma")
namespace avx512 {
struct Vec {
    VECTOR_OPS(__m512, 16, _mm512)
    static T abs(T a) { return _mm512_abs_ps(a); }
    static T with_sign_of(T magnitude, T sign) {
        return _mm512_castsi512_ps(_mm512_or_si512(
            _mm512_castps_si512(magnitude), _mm512_and_si512(_mm512_castps_si512(sign), _mm512_set1_epi32(INT32_MIN))));
    }
};
#include "depthwise_kernel.inc"
}  // namespace avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
struct Vec {
    VECTOR_OPS(__m256, 8, _mm256)
    static T abs(T a) { return _mm256_andnot_ps(set1(-0.0f), a); }
    static T with_sign_of(T magnitude, T sign) { return _mm256_or_ps(magnitude, _mm256_and_ps(set1(-0.0f), sign)); }
};
#include "depthwise_kernel.inc"
}  // namespace avx2
#pragma GCC pop_options

namespace {
constexpr int64_t kChannelBlock = 16;

bool supported_k(int64_t k) { return k == 3 || k == 5 || k == 7 || k == 9; }

// The (image, channel block) items, shared out over OpenVINO's own thread pool: its arena holds the inference's
// threads, which are idle while this node runs.
template <class Kernel, class Item, int Lanes>
void run_items(const ov::Shape& shape, int64_t k, const float* const* in, float* y) {
    const int64_t N = shape[0], H = shape[1], W = shape[2], C = shape[3], blocks = C / Lanes, items = N * blocks;
    ov::parallel_nt(0, [&](const int thread, const int threads) {
        Kernel kernel(H, W, k);
        for (int64_t i = items * thread / threads; i < items * (thread + 1) / threads; ++i)
            kernel.run(Item{in[0], y, in[1], in[2], in[3], in[4], in[5], i / blocks, (i % blocks) * Lanes, C});
    });
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
        NODE_VALIDATION_CHECK(this, get_input_size() == 6, "expects x, taps, bias, scale, shift, pre");
        for (size_t i = 0; i < 6; ++i)
            NODE_VALIDATION_CHECK(this, get_input_element_type(i) == ov::element::f32, "input ", i, " is not f32");
        NODE_VALIDATION_CHECK(this, m_isa == "avx512" || m_isa == "avx2", "isa must be avx512 or avx2");
        NODE_VALIDATION_CHECK(this, m_compute == "block" || m_compute == "copy", "compute must be block or copy");
        const auto& x = get_input_partial_shape(0);
        const auto& w = get_input_partial_shape(1);
        NODE_VALIDATION_CHECK(this, x.rank().is_dynamic() || x.size() == 4, "x must be [N, H, W, C]");
        if (x.rank().is_static() && x[3].is_static())
            NODE_VALIDATION_CHECK(this, x[3].get_length() % kChannelBlock == 0, "C must be a multiple of 16");
        if (w.is_static())
            NODE_VALIDATION_CHECK(this, w.size() == 3 && w[0] == w[1] && supported_k(w[0].get_length()),
                                  "taps must be [k, k, C] with k 3, 5, 7 or 9");
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
        OPENVINO_ASSERT(shape.size() == 4 && taps.size() == 3 && taps[2] == shape[3] && shape[3] % kChannelBlock == 0,
                        "ConvMixerDepthwiseBlock: x is not [N, H, W, C] with C a multiple of 16 and taps [k, k, C]");
        outputs[0].set_shape(shape);
        float* y = outputs[0].data<float>();
        const float* in[6];
        for (size_t i = 0; i < 6; ++i) in[i] = inputs[i].data<const float>();
        if (m_compute == "copy") {
            std::memcpy(y, in[0], inputs[0].get_byte_size());
        } else if (m_isa == "avx512") {
            OPENVINO_ASSERT(__builtin_cpu_supports("avx512f"), "ConvMixerDepthwiseBlock: isa avx512 on a CPU without it");
            run_items<avx512::Kernel, avx512::Item, avx512::Vec::L>(shape, static_cast<int64_t>(taps[0]), in, y);
        } else {
            OPENVINO_ASSERT(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"),
                            "ConvMixerDepthwiseBlock: isa avx2 on a CPU without AVX2 and FMA");
            run_items<avx2::Kernel, avx2::Item, avx2::Vec::L>(shape, static_cast<int64_t>(taps[0]), in, y);
        }
        return true;
    }

private:
    std::string m_isa = "avx2";
    std::string m_compute = "block";
};

OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>({std::make_shared<ov::OpExtension<DepthwiseBlock>>()}));
