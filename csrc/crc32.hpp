// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320) -- the same value as Python's zlib.crc32, so the
// pure-Python store reads and writes the same files.
#pragma once

#include <cstddef>
#include <cstdint>

namespace cxrl {

// Continue a CRC: crc32_update(0, data, n) is the CRC of data; crc32_update(crc32_update(0, a), b) is
// the CRC of a followed by b.
uint32_t crc32_update(uint32_t crc, const void* data, size_t n);

}  // namespace cxrl
