// TEST ONLY — file and buffer helpers shared by the emulator's drivers (emu_driver.cpp,
// csrc/trt/testing/plugin_harness.cpp in its --enqueue mode).
#pragma once

#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <new>
#include <string>
#include <vector>

namespace emu_io {

[[noreturn]] inline void die(const std::string& msg, int code = 2) {
  std::fprintf(stderr, "%s\n", msg.c_str());
  std::exit(code);
}

inline std::map<std::string, std::string> read_args(const std::string& dir) {
  std::ifstream in(dir + "/args.txt");
  if (!in) die("cannot read " + dir + "/args.txt");
  std::map<std::string, std::string> kv;
  std::string k, v;
  while (in >> k >> v) kv[k] = v;
  return kv;
}

inline int64_t geti(const std::map<std::string, std::string>& kv, const char* k) {
  auto it = kv.find(k);
  if (it == kv.end()) die(std::string("missing argument ") + k);
  return std::stoll(it->second);
}

// A file's bytes in a buffer of exactly that size (ASan-visible bounds).
inline std::vector<char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) die("cannot read " + path);
  return std::vector<char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void write_file(const std::string& path, const void* data, std::size_t bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
  if (!out) die("cannot write " + path);
}

// Exact-size, 256-byte aligned, filled with 0xFF (NaN floats, −1 integers).
struct Buffer {
  explicit Buffer(std::size_t n) : bytes(n) {
    if (n > 0) {
      ptr = static_cast<char*>(::operator new(n, std::align_val_t{256}));
      std::memset(ptr, 0xFF, n);
    }
  }
  ~Buffer() {
    if (ptr) ::operator delete(ptr, std::align_val_t{256});
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  char* ptr = nullptr;
  std::size_t bytes;
};

// A file's bytes copied to a 256-byte aligned, exact-size buffer: a test sets a
// pointer's alignment by the number of leading elements it writes before the operand.
struct Operand {
  explicit Operand(const std::string& path) : data(read_file(path)), buf(data.size()), base(buf.ptr) {
    if (!data.empty()) std::memcpy(buf.ptr, data.data(), data.size());
  }
  std::vector<char> data;
  Buffer buf;
  char* base;
};

}  // namespace emu_io
