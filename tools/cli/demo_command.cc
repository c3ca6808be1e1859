// kcopyfs demo [DIR]: shows the copy engine on sample images, then removes everything it made.
// (The mount, snapshot and mirror parts join it when the daemon exists.)
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>

#include "tools/cli/command.h"
#include "tools/cli/sizes.h"
#include "tools/cli/subprocess.h"

namespace fs = std::filesystem;

namespace kcopyfs::cli {

namespace {

constexpr const char* kVerb = "demo";

bool same_content(const fs::path& a, const fs::path& b) {
  std::ifstream fa(a, std::ios::binary), fb(b, std::ios::binary);
  std::vector<char> ba(1 << 20), bb(1 << 20);
  while (fa && fb) {
    fa.read(ba.data(), static_cast<std::streamsize>(ba.size()));
    fb.read(bb.data(), static_cast<std::streamsize>(bb.size()));
    if (fa.gcount() != fb.gcount() || !std::equal(ba.begin(), ba.begin() + fa.gcount(), bb.begin()))
      return false;
  }
  return fa.eof() && fb.eof();
}

uint64_t allocated_bytes(const fs::path& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_blocks) * 512 : 0;
}

// Removes the demo's directory however the demo ends.
struct Cleanup {
  fs::path dir;
  ~Cleanup() {
    std::error_code ec;
    if (!dir.empty()) fs::remove_all(dir, ec);
  }
};

}  // namespace

int run_demo(const std::vector<std::string>& args) {
  if (!args.empty() && (args[0] == "--help" || args[0] == "-h")) {
    std::cout
        << "Usage: kcopyfs demo [DIR]\n"
           "Builds a sample ext4 image in a new directory under DIR (default /tmp), copies it to two\n"
           "destinations with one read, checks the copies, shows a sparse copy, and removes all it made.\n";
    return 0;
  }
  if (args.size() > 1) return fail(kVerb, "takes at most one DIR");
  const fs::path base = args.empty() ? fs::temp_directory_path() : fs::path(args[0]);
  std::error_code ec;
  fs::create_directories(base, ec);
  if (ec) return fail(kVerb, "create " + base.string() + ": " + ec.message());
  std::string tmpl = (base / "kcopyfs-demo.XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr)
    return fail(kVerb, "mkdtemp in " + base.string() + ": " + std::strerror(errno));
  Cleanup cleanup{tmpl};
  const fs::path dir = tmpl;

  std::cout << "== kcopyfs demo in " << dir << std::endl;
  // A small filesystem with a few files, as a user's volume would hold.
  const fs::path files = dir / "files";
  fs::create_directories(files / "docs");
  std::ofstream(files / "hello.txt") << "Hello from kcopyfs.\n";
  std::ofstream(files / "docs" / "notes.txt") << "Volumes are copied sector by sector, read once.\n";
  {
    std::ofstream blob(files / "random.bin", std::ios::binary);
    std::mt19937_64 rng(42);
    for (int i = 0; i < (4 << 20) / 8; ++i) {
      uint64_t v = rng();
      blob.write(reinterpret_cast<const char*>(&v), sizeof v);
    }
  }
  const fs::path origin = dir / "volume.img";
  if (run_program({"mkfs.ext4", "-q", "-F", "-d", files.string(), origin.string(), "64M"}, true) != 0)
    return fail(kVerb, "mkfs.ext4 failed (is e2fsprogs installed?)");
  std::cout << "Made " << origin.filename()
            << ": a 64 MiB ext4 volume holding hello.txt, docs/notes.txt and 4 MiB "
            << "of random data (" << format_bytes(static_cast<double>(allocated_bytes(origin)))
            << " allocated).\n\n";

  const fs::path copy_a = dir / "copy-a.img", copy_b = dir / "copy-b.img";
  // Flushed first: the copy's progress goes to stderr, and the story must read in order when piped.
  std::cout << "$ kcopyfs copy --progress volume.img copy-a.img copy-b.img" << std::endl;
  if (run_copy({"--progress", origin.string(), copy_a.string(), copy_b.string()}) != 0)
    return fail(kVerb, "the copy failed");
  const bool a_ok = same_content(origin, copy_a), b_ok = same_content(origin, copy_b);
  std::cout << "Both copies equal the volume byte for byte: " << (a_ok && b_ok ? "yes" : "NO") << "\n";
  const bool fsck_ok = run_program({"e2fsck", "-f", "-n", copy_b.string()}, true) == 0;
  std::cout << "e2fsck -fn on copy-b.img: " << (fsck_ok ? "clean" : "ERRORS") << "\n\n";

  const fs::path sparse = dir / "sparse.img";
  std::cout << "$ kcopyfs copy --sparse volume.img sparse.img" << std::endl;
  if (run_copy({"--sparse", origin.string(), sparse.string()}) != 0)
    return fail(kVerb, "the sparse copy failed");
  std::cout << "copy-a.img allocates " << format_bytes(static_cast<double>(allocated_bytes(copy_a)))
            << "; sparse.img allocates " << format_bytes(static_cast<double>(allocated_bytes(sparse)))
            << " and reads the same: " << (same_content(origin, sparse) ? "yes" : "NO") << "\n\n";

  std::cout << "Removing " << dir << "\n";
  return a_ok && b_ok && fsck_ok ? 0 : 1;
}

}  // namespace kcopyfs::cli
