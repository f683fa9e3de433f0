/* The kernel for AVX2 with FMA (isa.inc, impl.hpp). */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define ISA_TARGET "avx2,fma,bmi2"
#define ISA_NAMESPACE bptt_isa_avx2
#define ISA_NAME "avx2"
#define VBYTES 32
#define NATIVE_BF16 0
#include "isa.inc"
#endif
