/* The kernel for the compiler's baseline for the target (x86-64: SSE2), portable (isa.inc, impl.hpp). */
#define ISA_NAMESPACE bptt_isa_base
#define ISA_NAME "base"
#define VBYTES 16
#define NATIVE_BF16 0
#include "isa.inc"
