#pragma once
// The namespace that holds every function whose machine code depends on the
// instruction set it is compiled for.
//
// Note [one-definition trap]: an inline function or template compiled in two
// translation units with different -m flags yields two different bodies under one
// symbol, and the linker keeps either one. If the AVX-512 body wins, the portable
// path crashes on older CPUs. The Python module therefore compiles the kernels
// once per instruction set, each time with RELAXCAT_ISA_NAMESPACE set to its own
// name, so no two copies share a symbol. C++ embedders leave it unset and get
// `native`: the code their own compiler flags select.
#ifndef RELAXCAT_ISA_NAMESPACE
#define RELAXCAT_ISA_NAMESPACE native
#endif

// The kernels test for NaN and infinities (grad checks, masked categories,
// limits at zeros), which -ffast-math and -ffinite-math-only let the compiler
// drop: under them bad input passed silently (a fresh-user review: 252 NaN and
// infinite gradients accepted). Refuse to build that way.
#if defined(__FAST_MATH__) || (defined(__FINITE_MATH_ONLY__) && __FINITE_MATH_ONLY__)
#error "relaxcat needs IEEE arithmetic: no -ffast-math or -ffinite-math-only"
#endif
