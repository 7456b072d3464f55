#pragma once
// relaxcat's C++ API in one include: the version, the Philox generator and the
// distributions. Eigen overloads are in relaxcat/eigen.hpp (the only header that
// needs Eigen); docs/cpp.md describes the whole API.

#include "distribution.hpp"
#include "philox.hpp"
#include "version.hpp"
