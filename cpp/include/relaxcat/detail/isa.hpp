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

// The headers use C++17 (if constexpr, hexadecimal float literals, among
// others); an older standard would fail deep inside them with dozens of
// unrelated errors (a fresh-user review, building by hand with -std=c++14).
// distribution.hpp and philox.hpp include this header before any other. MSVC reports
// its standard in _MSVC_LANG, __cplusplus only under /Zc:__cplusplus.
#if defined(_MSVC_LANG)
#define RELAXCAT_CPLUSPLUS _MSVC_LANG
#else
#define RELAXCAT_CPLUSPLUS __cplusplus
#endif
#if RELAXCAT_CPLUSPLUS < 201703L
#error "relaxcat needs C++17 or later (for example -std=c++17)"
#endif
#undef RELAXCAT_CPLUSPLUS
