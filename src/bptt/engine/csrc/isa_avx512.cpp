/* The kernel for AVX-512 without AVX512-BF16 (bf16 products emulated in float32) (isa.inc, impl.hpp). */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define ISA_TARGET "avx512f,avx512bw,avx512vl,avx512dq,fma,bmi2"
#define ISA_NAMESPACE bptt_isa_avx512
#define ISA_NAME "avx512"
#define VBYTES 64
#define NATIVE_BF16 0
#include "isa.inc"
#endif
