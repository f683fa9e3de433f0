"""The compiled kernel, an optional extension (pyproject.toml has everything else).

``bptt.engine._kernel`` is plain C++ (no torch headers) built by setuptools at ``pip install``.
It is optional: where it cannot be built (no compiler, an unsupported one), the install
carries on without it and the engines say in one line, at first use, that they run their
Python code instead (docs/performance.md). The build is for any CPU of the target: the
instruction-set-specific code is compiled for its instruction set by pragmas in its own files
(csrc/isa_*.cpp) and chosen when the module loads, never by -march=native.
"""

import sys

from setuptools import Extension, setup

CSRC = "src/bptt/engine/csrc"

if sys.platform == "win32":
    FLAGS = ["/O2", "/std:c++17"]
else:
    FLAGS = ["-O3", "-std=c++17", "-fvisibility=hidden", "-fno-math-errno", "-Wall",
             "-Wno-unused-function"]

kernel = Extension(
    "bptt.engine._kernel",
    sources=[f"{CSRC}/{name}.cpp" for name in
             ("module", "isa_base", "isa_avx2", "isa_avx512", "isa_avx512bf16")],
    depends=[f"{CSRC}/{name}" for name in ("kernel.h", "impl.hpp", "ln.hpp", "isa.inc",
                                           "bf16_pack.hpp", "gemm_pack.hpp")],
    language="c++",
    extra_compile_args=FLAGS,
    optional=True,
)

setup(ext_modules=[kernel])
