// Launch grids of the CUDA kernels and CUDA's limits on them. The launchers (csrc/cuda/*.cu) compute
// their grids with the functions declared next to them, and the extension exposes those functions to
// Python (`stzsar._C.cuda_launch_grid`), so tests check the grids the launchers use against the limits
// without a GPU. Plain C++: no CUDA headers.
#pragma once

#include <cstdint>

namespace stzsar {
namespace cuda_grid {

struct Grid {
  int64_t x, y, z;
};

constexpr int64_t kMaxX = 2147483647;  // 2^31 - 1 blocks on grid axis x
constexpr int64_t kMaxYZ = 65535;      // on axes y and z

inline bool fits(const Grid& g) {
  return g.x >= 0 && g.y >= 0 && g.z >= 0 && g.x <= kMaxX && g.y <= kMaxYZ && g.z <= kMaxYZ;
}

}  // namespace cuda_grid
}  // namespace stzsar
