// A file-in/file-out main around one generated conv kernel (edgeguard_conv, defined above this
// text in the same translation unit), for running a cross-compiled kernel under qemu.
// usage: prog x.bin nx w.bin nw bias.bin nbias out.bin nout batch threads
#include <cstdio>
#include <cstdlib>
#include <vector>

static std::vector<float> read_floats(const char* path, long n) {
  std::vector<float> v(n);
  FILE* f = std::fopen(path, "rb");
  if (!f || std::fread(v.data(), sizeof(float), n, f) != (size_t)n) {
    std::perror(path);
    std::exit(2);
  }
  std::fclose(f);
  return v;
}

int main(int argc, char** argv) {
  if (argc != 11) {
    std::fprintf(stderr, "bad arguments\n");
    return 2;
  }
  auto x = read_floats(argv[1], std::atol(argv[2]));
  auto w = read_floats(argv[3], std::atol(argv[4]));
  auto b = read_floats(argv[5], std::atol(argv[6]));
  std::vector<float> out(std::atol(argv[8]));
  edgeguard_conv(nullptr, x.data(), w.data(), b.data(), out.data(), nullptr, nullptr, nullptr,
                 std::atoi(argv[9]),
                 std::atoi(argv[10]));
  FILE* f = std::fopen(argv[7], "wb");
  std::fwrite(out.data(), sizeof(float), out.size(), f);
  std::fclose(f);
  return 0;
}
