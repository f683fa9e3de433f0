/* The kernel for AVX-512 with AVX512-BF16 (bf16 products by vdpbf16ps) (isa.inc, impl.hpp). */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define ISA_TARGET "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,bmi2"
#define ISA_NAMESPACE bptt_isa_avx512bf16
#define ISA_NAME "avx512bf16"
#define VBYTES 64
#define NATIVE_BF16 1
#include "isa.inc"
#endif
