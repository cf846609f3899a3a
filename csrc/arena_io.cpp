// Save/load of a TrajectoryArena. File layout (little-endian), mirrored by trajectory_reference.py:
//   0   magic "CXRLTRJ1"            8 bytes
//   8   u32 format version (1)      12  u32 dtype code
//   16  u64 N   24 u64 T   32 u64 K
//   40  u32 ndim   44 u32 itemsize   48  u64 shape[8] (unused dims 0)
//   112 u64 payload bytes
//   120 u32 crc32 of each payload section (latents, log_probs, timesteps, prompt_ids, rewards, advantages)
//   144 u32 crc32 of bytes [0, 144)
//   148 payload: the six sections back to back, no padding
// A file is written to "<path>.tmp" and renamed, so a crash never leaves a half-written file at path.
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <stdexcept>

#include "arena.hpp"
#include "common.hpp"
#include "crc32.hpp"

namespace cxrl {
namespace {

constexpr char kMagic[8] = {'C', 'X', 'R', 'L', 'T', 'R', 'J', '1'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderBytes = 148;
constexpr size_t kCrcOffset = 120;
constexpr size_t kChunk = size_t(64) << 20;  // I/O in 64 MiB pieces

bool host_little_endian() {
  const uint16_t one = 1;
  unsigned char first;
  std::memcpy(&first, &one, 1);
  return first == 1;
}

template <typename T>
void put(unsigned char* h, size_t off, T v) { std::memcpy(h + off, &v, sizeof(T)); }
template <typename T>
T get(const unsigned char* h, size_t off) {
  T v;
  std::memcpy(&v, h + off, sizeof(T));
  return v;
}

struct File {
  std::FILE* f;
  explicit File(std::FILE* fp) : f(fp) {}
  ~File() { if (f) std::fclose(f); }
};

uint32_t section_crc(const Section& s) {
  uint32_t crc = 0;
  for (uint64_t off = 0; off < s.nbytes; off += kChunk)
    crc = crc32_update(crc, s.data + off, std::min<uint64_t>(kChunk, s.nbytes - off));
  return crc;
}

}  // namespace

void TrajectoryArena::save(const std::string& path) const {
  if (!host_little_endian()) throw std::runtime_error("saving trajectories needs a little-endian host");
  unsigned char h[kHeaderBytes] = {0};
  std::memcpy(h, kMagic, 8);
  put<uint32_t>(h, 8, kVersion);
  put<uint32_t>(h, 12, dtype_);
  put<uint64_t>(h, 16, n_);
  put<uint64_t>(h, 24, t_);
  put<uint64_t>(h, 32, k_);
  put<uint32_t>(h, 40, static_cast<uint32_t>(shape_.size()));
  put<uint32_t>(h, 44, static_cast<uint32_t>(itemsize_));
  for (size_t i = 0; i < shape_.size(); ++i) put<uint64_t>(h, 48 + 8 * i, shape_[i]);
  const auto secs = sections();
  uint64_t payload = 0;
  for (size_t i = 0; i < secs.size(); ++i) {
    payload += secs[i].nbytes;
    put<uint32_t>(h, kCrcOffset + 4 * i, section_crc(secs[i]));
  }
  put<uint64_t>(h, 112, payload);
  put<uint32_t>(h, 144, crc32_update(0, h, 144));

  const std::string tmp = path + ".tmp";
  {
    File out(std::fopen(tmp.c_str(), "wb"));
    if (!out.f) throw std::runtime_error("cannot open '" + tmp + "' for writing: " + std::strerror(errno));
    bool ok = std::fwrite(h, 1, kHeaderBytes, out.f) == kHeaderBytes;
    for (const auto& s : secs)
      for (uint64_t off = 0; ok && off < s.nbytes; off += kChunk) {
        size_t n = std::min<uint64_t>(kChunk, s.nbytes - off);
        ok = std::fwrite(s.data + off, 1, n, out.f) == n;
      }
    ok = ok && std::fflush(out.f) == 0;
    if (!ok) {
      std::string why = std::strerror(errno);
      std::fclose(out.f);
      out.f = nullptr;
      std::remove(tmp.c_str());
      throw std::runtime_error("writing trajectory file '" + tmp + "' failed: " + why);
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) throw std::runtime_error("cannot rename '" + tmp + "' to '" + path + "': " + ec.message());
}

std::unique_ptr<TrajectoryArena> TrajectoryArena::load(const std::string& path) {
  if (!host_little_endian()) throw std::runtime_error("loading trajectories needs a little-endian host");
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(path, ec);
  if (ec) throw std::runtime_error("cannot read trajectory file '" + path + "': " + ec.message());
  const std::string where = "trajectory file '" + path + "'";
  if (size < kHeaderBytes)
    throw FormatError(where + " is truncated: " + std::to_string(size) + " bytes, shorter than the " +
                      std::to_string(kHeaderBytes) + "-byte header");
  File in(std::fopen(path.c_str(), "rb"));
  if (!in.f) throw std::runtime_error("cannot open " + where + ": " + std::strerror(errno));
  unsigned char h[kHeaderBytes];
  if (std::fread(h, 1, kHeaderBytes, in.f) != kHeaderBytes) throw FormatError("cannot read the header of " + where);
  if (std::memcmp(h, kMagic, 8) != 0) throw FormatError(where + " is not a cxrl trajectory file (bad magic)");
  if (get<uint32_t>(h, 144) != crc32_update(0, h, 144)) throw FormatError(where + " is corrupted: header checksum mismatch");
  if (get<uint32_t>(h, 8) != kVersion)
    throw FormatError(where + " has format version " + std::to_string(get<uint32_t>(h, 8)) + "; this build reads version 1");
  const uint32_t ndim = get<uint32_t>(h, 40);
  if (ndim < 1 || ndim > 8) throw FormatError(where + " has an invalid latent ndim " + std::to_string(ndim));
  std::vector<int64_t> shape(ndim);
  for (uint32_t i = 0; i < ndim; ++i) shape[i] = static_cast<int64_t>(get<uint64_t>(h, 48 + 8 * i));
  std::unique_ptr<TrajectoryArena> arena;
  try {
    arena = std::make_unique<TrajectoryArena>(static_cast<int64_t>(get<uint64_t>(h, 16)),
                                              static_cast<int64_t>(get<uint64_t>(h, 24)), shape,
                                              static_cast<int64_t>(get<uint64_t>(h, 32)), get<uint32_t>(h, 12));
  } catch (const std::invalid_argument& err) {
    throw FormatError(where + " has an invalid header: " + err.what());
  }
  if (get<uint32_t>(h, 44) != arena->itemsize()) throw FormatError(where + " has an itemsize that does not match its dtype");
  const auto secs = arena->sections();
  uint64_t payload = 0;
  for (const auto& s : secs) payload += s.nbytes;
  if (get<uint64_t>(h, 112) != payload) throw FormatError(where + " has a payload size that does not match its dimensions");
  if (size < kHeaderBytes + payload)
    throw FormatError(where + " is truncated: " + std::to_string(size) + " bytes, expected " + std::to_string(kHeaderBytes + payload));
  if (size > kHeaderBytes + payload)
    throw FormatError(where + " has " + std::to_string(size - kHeaderBytes - payload) + " unexpected trailing bytes");
  for (size_t i = 0; i < secs.size(); ++i) {
    const auto& s = secs[i];
    for (uint64_t off = 0; off < s.nbytes; off += kChunk) {
      size_t n = std::min<uint64_t>(kChunk, s.nbytes - off);
      if (std::fread(s.data + off, 1, n, in.f) != n) throw FormatError("reading section '" + std::string(s.name) + "' of " + where + " failed");
    }
    if (section_crc(s) != get<uint32_t>(h, kCrcOffset + 4 * i))
      throw FormatError(where + " is corrupted: checksum mismatch in section '" + s.name + "'");
  }
  return arena;
}

}  // namespace cxrl
