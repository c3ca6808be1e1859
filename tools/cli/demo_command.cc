// kcopyfs demo [DIR]: tells the whole story on sample images (the copy engine, a mount, a snapshot of a live
// ext4 volume, a mirror and its resync, status), then removes everything it made, whatever happened.
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <random>
#include <sstream>
#include <thread>
#include <utility>

#include "tools/cli/command.h"
#include "tools/cli/sizes.h"
#include "tools/cli/subprocess.h"

namespace fs = std::filesystem;

namespace kcopyfs::cli {

namespace {

constexpr const char* kVerb = "demo";
// The daemon steps run this very binary as a child: `mount` forks the daemon, and this process already has
// threads and an io_uring from the copy part, which a fork would not carry over.
constexpr const char* kSelf = "/proc/self/exe";
constexpr auto kMountWait = std::chrono::seconds(10);

// What the sample volume holds before and after the snapshot; the checks compare against these.
const std::string kHello = "Hello from kcopyfs.\n";
const std::string kNotes = "Volumes are copied sector by sector, read once.\n";
const std::string kAdded = "Written through the mounted origin, just before the snapshot.\n";
const std::string kChanged = "Hello again: this line was written after the snapshot.\n";

// Set by SIGINT/SIGTERM so the demo stops at the next step and still cleans up.
volatile std::sig_atomic_t g_interrupted = 0;

void on_interrupt(int) { g_interrupted = 1; }

bool same_content(const fs::path& a, const fs::path& b) {
  std::ifstream fa(a, std::ios::binary), fb(b, std::ios::binary);
  if (!fa || !fb) return false;
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

// The whole content of a file, or kMissing when it cannot be opened (a deleted file).
const std::string kMissing = std::string("\0missing", 8);
std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) return kMissing;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_text(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) throw std::runtime_error("write " + p.string() + " failed");
}

// Undoes the octal escapes of /proc/self/mountinfo (\040 for a space).
std::string unescape_mount_field(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() &&
        s.substr(i + 1, 3).find_first_not_of("01234567") == std::string::npos) {
      out.push_back(static_cast<char>(std::stoi(s.substr(i + 1, 3), nullptr, 8)));
      i += 3;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

// Whether something is mounted exactly at `path` (an absolute path).
bool mounted_at(const fs::path& path) {
  std::ifstream in("/proc/self/mountinfo");
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::string id, parent, devno, root, mount_point;
    fields >> id >> parent >> devno >> root >> mount_point;
    if (unescape_mount_field(mount_point) == path.string()) return true;
  }
  return false;
}

// Whether a loop device is still backed by a file under `dir` (the kernel lets go of it shortly after
// umount).
bool loop_backed_under(const fs::path& dir) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/sys/block", ec)) {
    if (entry.path().filename().string().rfind("loop", 0) != 0) continue;
    std::string backing = read_text(entry.path() / "loop" / "backing_file");
    if (backing == kMissing) continue;
    while (!backing.empty() && backing.back() == '\n') backing.pop_back();
    if (backing.rfind(dir.string() + "/", 0) == 0) return true;
  }
  return false;
}

bool wait_until(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

bool in_path(const std::string& program) {
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path != nullptr ? path : "/usr/bin:/bin");
  for (std::string d; std::getline(dirs, d, ':');) {
    if (!d.empty() && ::access((fs::path(d) / program).c_str(), X_OK) == 0) return true;
  }
  return false;
}

// Runs the steps of the story in the demo's directory: each command is printed as "$ ..." with paths relative
// to that directory, exactly as it is run, so a reader can follow and repeat it.
class Shell {
 public:
  explicit Shell(fs::path dir) : dir_(std::move(dir)) {}
  const fs::path& dir() const { return dir_; }
  fs::path path(const std::string& name) const { return dir_ / name; }

  static std::string join(const std::vector<std::string>& words) {
    std::string line;
    for (const auto& w : words) {
      const bool quote = w.find_first_of(" \t'\"$;&|<>") != std::string::npos || w.empty();
      line += (line.empty() ? "" : " ") + (quote ? "'" + w + "'" : w);
    }
    return line;
  }
  // Prints "$ line" before a step; flushed so the child's output follows it when stdout is a pipe.
  static void show(const std::string& line) { std::cout << "$ " << line << std::endl; }

  // Prints and runs words ("kcopyfs ..." runs this binary); its exit code.
  int run(const std::vector<std::string>& words, bool quiet = false) const {
    if (!quiet) show(join(words));
    std::cerr.flush();
    std::vector<std::string> argv = words;
    if (argv[0] == "kcopyfs") argv[0] = kSelf;
    return run_program_in(dir_.string(), argv, quiet);
  }
  // run, and on failure the one error line of the demo; whether it succeeded.
  bool ok(const std::vector<std::string>& words) const {
    const int code = g_interrupted ? 130 : run(words);
    if (code == 0) return true;
    fail(kVerb, g_interrupted ? std::string("interrupted")
                              : "'" + join(words) + "' failed (exit " + std::to_string(code) + ")");
    return false;
  }

 private:
  fs::path dir_;
};

// Removes the demo's directory however the demo ends.
struct Cleanup {
  fs::path dir;
  ~Cleanup() {
    std::error_code ec;
    if (!dir.empty()) fs::remove_all(dir, ec);
  }
};

// The demo's kcopyfs mount: unmounted, and its daemon gone, however the demo ends.
class KcopyfsMount {
 public:
  KcopyfsMount(const Shell& sh, std::string state, std::string mnt) : sh_(sh), state_(state), mnt_(mnt) {}
  ~KcopyfsMount() { unmount(true); }
  KcopyfsMount(const KcopyfsMount&) = delete;
  KcopyfsMount& operator=(const KcopyfsMount&) = delete;

  bool mount() {
    fs::create_directories(sh_.path(mnt_));
    // Set first: an interrupted or failed mount may still have left a mount or a daemon to clean up.
    mounted_ = true;
    return sh_.ok({"kcopyfs", "mount", "--state", state_, mnt_});
  }
  // `kcopyfs umount`; quiet (after a failure) it falls back to a lazy unmount and stops a leftover daemon.
  bool unmount(bool quiet) {
    if (!mounted_) return true;
    mounted_ = false;
    const fs::path mnt = sh_.path(mnt_);
    // A loop device still holding a view keeps the mount busy; the kernel drops it soon after its umount.
    wait_until([&] { return !loop_backed_under(mnt); }, kMountWait);
    const pid_t daemon = daemon_pid();
    const std::vector<std::string> umount{"kcopyfs", "umount", mnt_};
    const bool ok = quiet ? !mounted_at(mnt) || sh_.run(umount, true) == 0 : sh_.ok(umount);
    if (!ok && mounted_at(mnt)) {
      sh_.run({"fusermount3", "-u", "-z", mnt_}, true);
      if (mounted_at(mnt) && ::geteuid() == 0) sh_.run({"umount", "-l", mnt_}, true);
    }
    // The daemon exits once its mount is gone; one that does not is ours to stop, and is checked to be this
    // binary so a recycled pid is left alone.
    if (daemon > 0 && !wait_until([&] { return !is_our_daemon(daemon); }, kMountWait))
      ::kill(daemon, SIGTERM);
    return ok;
  }

 private:
  pid_t daemon_pid() const {
    std::ifstream in(sh_.path(state_) / "lock");
    long pid = 0;
    return in >> pid ? static_cast<pid_t>(pid) : 0;
  }
  static bool is_our_daemon(pid_t pid) {
    struct stat self {};
    struct stat other {};
    if (::stat(kSelf, &self) != 0) return false;
    const std::string exe = "/proc/" + std::to_string(pid) + "/exe";
    if (::stat(exe.c_str(), &other) != 0) return false;
    // A zombie has no exe any more, so it fails the stat above.
    return self.st_dev == other.st_dev && self.st_ino == other.st_ino;
  }

  const Shell& sh_;
  std::string state_, mnt_;
  bool mounted_ = false;
};

// An ext4 image (a view) mounted on a directory of the demo for file-level access: by the kernel through a
// loop device as root, with fuse2fs otherwise. Unmounted however the demo ends.
class Ext4Mount {
 public:
  Ext4Mount(const Shell& sh, bool loop, std::string at) : sh_(sh), loop_(loop), at_(std::move(at)) {}
  ~Ext4Mount() { unmount(true); }
  Ext4Mount(const Ext4Mount&) = delete;
  Ext4Mount& operator=(const Ext4Mount&) = delete;

  bool mount(const std::string& image, bool read_only) {
    fs::create_directories(sh_.path(at_));
    if (loop_) {
      // noload: the snapshot of a frozen ext4 still says its journal needs recovery, which a read-only view
      // cannot and need not replay.
      mounted_ = true;
      return sh_.ok({"mount", "-o", read_only ? "loop,ro,noload" : "loop", image, at_});
    }
    // In the foreground, as our child, so that unmounting can wait for it to write everything back and exit.
    const std::vector<std::string> words{"fuse2fs", "-f", image,
                                         at_,       "-o", read_only ? "ro,fakeroot" : "fakeroot"};
    Shell::show(Shell::join(words) + " &");
    fuse2fs_ = start_program(words, true, sh_.dir().string());
    if (fuse2fs_ < 0) {
      fail(kVerb, "cannot start fuse2fs");
      return false;
    }
    const fs::path at = sh_.path(at_);
    mounted_ = wait_until([&] { return mounted_at(at) || exited(); }, kMountWait) && mounted_at(at);
    if (!mounted_) {
      unmount(true);
      fail(kVerb, "fuse2fs did not mount " + image + " (run the command above by hand to see why)");
    }
    return mounted_;
  }
  bool unmount(bool quiet) {
    const fs::path at = sh_.path(at_);
    bool ok = true;
    if (std::exchange(mounted_, false) && mounted_at(at)) {
      const std::vector<std::string> words = loop_ ? std::vector<std::string>{"umount", at_}
                                                   : std::vector<std::string>{"fusermount3", "-u", at_};
      ok = quiet ? sh_.run(words, true) == 0 : sh_.ok(words);
      if (!ok && mounted_at(at)) {
        sh_.run(loop_ ? std::vector<std::string>{"umount", "-l", at_}
                      : std::vector<std::string>{"fusermount3", "-u", "-z", at_},
                true);
      }
    }
    if (fuse2fs_ > 0) {
      // fuse2fs writes its last changes back after the unmount; the snapshot must not miss them.
      if (!wait_until([&] { return exited(); }, kMountWait)) {
        ::kill(fuse2fs_, SIGKILL);
        wait_program(fuse2fs_);
        fuse2fs_ = -1;
        ok = false;
      }
    }
    return ok;
  }

 private:
  bool exited() {
    if (fuse2fs_ <= 0) return true;
    if (wait_program(fuse2fs_, false) == -1) return false;
    fuse2fs_ = -1;
    return true;
  }

  const Shell& sh_;
  bool loop_;
  std::string at_;
  bool mounted_ = false;
  pid_t fuse2fs_ = -1;
};

// A frozen filesystem: thawed however the demo ends, since a frozen one would hang its unmount and writers.
class Freeze {
 public:
  Freeze(const Shell& sh, std::string at) : sh_(sh), at_(std::move(at)) {}
  ~Freeze() { thaw(true); }
  Freeze(const Freeze&) = delete;
  Freeze& operator=(const Freeze&) = delete;
  bool freeze() {
    // Set first: a freeze cut short may still have frozen it, and thawing a thawed one is harmless.
    frozen_ = true;
    return sh_.ok({"fsfreeze", "-f", at_});
  }
  bool thaw(bool quiet) {
    if (!frozen_) return true;
    frozen_ = false;
    return quiet ? sh_.run({"fsfreeze", "-u", at_}, true) == 0 : sh_.ok({"fsfreeze", "-u", at_});
  }

 private:
  const Shell& sh_;
  std::string at_;
  bool frozen_ = false;
};

// A step the reader sees as a shell command but that the demo does itself, to check the result.
void show_write(const Shell& sh, const std::string& name, const std::string& text) {
  std::string shown = text;
  while (!shown.empty() && shown.back() == '\n') shown.pop_back();
  Shell::show("echo '" + shown + "' > " + name);
  write_text(sh.path(name), text);
}

// The sample files, as a user's volume would hold them.
void make_sample_files(const fs::path& files) {
  fs::create_directories(files / "docs");
  write_text(files / "hello.txt", kHello);
  write_text(files / "docs" / "notes.txt", kNotes);
  std::ofstream blob(files / "random.bin", std::ios::binary);
  std::mt19937_64 rng(42);
  for (int i = 0; i < (4 << 20) / 8; ++i) {
    uint64_t v = rng();
    blob.write(reinterpret_cast<const char*>(&v), sizeof v);
  }
}

// Part 1: the copy engine, in this process.
int copy_part(const Shell& sh, const fs::path& volume) {
  const fs::path copy_a = sh.path("copy-a.img"), copy_b = sh.path("copy-b.img");
  // Flushed first: the copy's progress goes to stderr, and the story must read in order when piped.
  std::cout << "== 1. The copy engine: one read of a volume feeds several destinations" << std::endl;
  Shell::show("kcopyfs copy --progress volume.img copy-a.img copy-b.img");
  if (run_copy({"--progress", volume.string(), copy_a.string(), copy_b.string()}) != 0)
    return fail(kVerb, "the copy failed");
  const bool a_ok = same_content(volume, copy_a), b_ok = same_content(volume, copy_b);
  std::cout << "Both copies equal the volume byte for byte: " << (a_ok && b_ok ? "yes" : "NO") << "\n";
  const bool fsck_ok = run_program({"e2fsck", "-f", "-n", copy_b.string()}, true) == 0;
  std::cout << "e2fsck -fn on copy-b.img: " << (fsck_ok ? "clean" : "ERRORS") << "\n\n";

  const fs::path sparse = sh.path("sparse.img");
  Shell::show("kcopyfs copy --sparse volume.img sparse.img");
  if (run_copy({"--sparse", volume.string(), sparse.string()}) != 0)
    return fail(kVerb, "the sparse copy failed");
  const bool sparse_ok = same_content(volume, sparse);
  std::cout << "copy-a.img allocates " << format_bytes(static_cast<double>(allocated_bytes(copy_a)))
            << "; sparse.img allocates " << format_bytes(static_cast<double>(allocated_bytes(sparse)))
            << " and reads the same: " << (sparse_ok ? "yes" : "NO") << "\n\n";
  // The copies are not needed further; the daemon part makes its own images.
  fs::remove(copy_a);
  fs::remove(copy_b);
  fs::remove(sparse);
  if (!(a_ok && b_ok && fsck_ok && sparse_ok)) return fail(kVerb, "a copy differs from the volume");
  return 0;
}

// Shows a file of a mounted volume with cat (a missing one with ls -l of its directory) and says whether it
// holds `expected` (kMissing: that it is gone).
bool show_file(const Shell& sh, const std::string& name, const std::string& expected) {
  const std::string actual = read_text(sh.path(name));
  if (expected == kMissing) {
    sh.run({"ls", "-l", fs::path(name).parent_path().string()});
  } else {
    sh.run({"cat", name});
  }
  return actual == expected;
}

// Part 2: a snapshot of a live ext4 volume keeps its point in time while the origin changes.
int snapshot_part(const Shell& sh, KcopyfsMount& kmount, bool loop, const fs::path& volume) {
  std::cout
      << "== 2. A snapshot of a mounted ext4 volume\n"
      << "The daemon serves origins, snapshots and mirrors as files under mnt/; the ext4 volumes in them are "
      << (loop ? "loop-mounted (we are root)" : "opened with fuse2fs (we are not root)") << "." << std::endl;
  fs::copy_file(volume, sh.path("origin.img"));
  if (!kmount.mount()) return 1;
  if (!sh.ok({"kcopyfs", "origin", "add", "mnt", "data", "origin.img"})) return 1;
  Ext4Mount origin_fs(sh, loop, "origin-fs");
  if (!origin_fs.mount("mnt/origins/data", false)) return 1;
  show_write(sh, "origin-fs/added.txt", kAdded);
  {
    Freeze frozen(sh, "origin-fs");
    if (loop) {
      // Freezing flushes the filesystem and holds new writes, so the snapshot sees a consistent volume.
      if (!frozen.freeze()) return 1;
    } else if (!origin_fs.unmount(false)) {
      // fuse2fs cannot be frozen: unmounting it is what makes the volume consistent.
      return 1;
    }
    if (!sh.ok({"kcopyfs", "snapshot", "create", "mnt", "data", "before"})) return 1;
    if (loop) {
      if (!frozen.thaw(false)) return 1;
    } else if (!origin_fs.mount("mnt/origins/data", false)) {
      return 1;
    }
  }
  show_write(sh, "origin-fs/hello.txt", kChanged);
  Shell::show("rm origin-fs/docs/notes.txt");
  fs::remove(sh.path("origin-fs/docs/notes.txt"));
  // The changes reach the origin's device now, so the snapshot has to have copied the old chunks away first.
  if (!sh.ok({"sync"})) return 1;
  Ext4Mount snapshot_fs(sh, loop, "snapshot-fs");
  if (!snapshot_fs.mount("mnt/snapshots/before", true)) return 1;

  std::cout << "The snapshot still holds the files as they were:" << std::endl;
  bool ok = show_file(sh, "snapshot-fs/hello.txt", kHello);
  ok = show_file(sh, "snapshot-fs/docs/notes.txt", kNotes) && ok;
  ok = show_file(sh, "snapshot-fs/added.txt", kAdded) && ok;
  std::cout << "while the origin has the new ones:" << std::endl;
  ok = show_file(sh, "origin-fs/hello.txt", kChanged) && ok;
  ok = show_file(sh, "origin-fs/docs/notes.txt", kMissing) && ok;
  std::cout << "The snapshot kept the old files and the origin has the new ones: " << (ok ? "yes" : "NO")
            << "\n"
            << std::endl;
  if (!snapshot_fs.unmount(false) || !origin_fs.unmount(false)) return 1;
  std::cout << "\n";
  if (!ok) return fail(kVerb, "the snapshot or the origin does not hold what it should");
  return 0;
}

// Part 3: a mirror of two legs, resynced from leg 0, with progress.
int mirror_part(const Shell& sh, const fs::path& volume) {
  std::cout << "== 3. A mirror: leg0.img holds the ext4 volume, leg1.img is empty" << std::endl;
  fs::copy_file(volume, sh.path("leg0.img"));
  std::ofstream(sh.path("leg1.img")).close();
  fs::resize_file(sh.path("leg1.img"), fs::file_size(volume));
  if (!sh.ok({"kcopyfs", "mirror", "create", "mnt", "mirror", "leg0.img", "leg1.img", "--wait"})) return 1;
  bool same = same_content(sh.path("leg0.img"), sh.path("leg1.img"));
  std::cout << "After the initial resync the legs are identical: " << (same ? "yes" : "NO") << "\n"
            << std::endl;
  // A throttled full resync takes long enough to show its progress.
  std::cout << "A full resync again, throttled to 32 MiB/s so its progress shows:" << std::endl;
  if (!sh.ok({"kcopyfs", "mirror", "throttle", "mnt", "mirror", "--rate", "32M"})) return 1;
  if (!sh.ok({"kcopyfs", "mirror", "resync", "mnt", "mirror", "--wait"})) return 1;
  if (!sh.ok({"kcopyfs", "mirror", "throttle", "mnt", "mirror"})) return 1;
  same = same_content(sh.path("leg0.img"), sh.path("leg1.img")) && same;
  std::cout << "The mirror legs are identical byte for byte: " << (same ? "yes" : "NO") << "\n" << std::endl;
  if (!same) return fail(kVerb, "the mirror's legs differ after the resync");
  return 0;
}

int run_story(const Shell& sh) {
  std::cout << "== kcopyfs demo in " << sh.dir() << " (commands run there)" << std::endl;
  const fs::path files = sh.path("files");
  make_sample_files(files);
  const fs::path volume = sh.path("volume.img");
  if (run_program({"mkfs.ext4", "-q", "-F", "-d", files.string(), volume.string(), "64M"}, true) != 0)
    return fail(kVerb, "mkfs.ext4 failed (is e2fsprogs installed?)");
  std::cout
      << "Made volume.img: a 64 MiB ext4 volume holding hello.txt, docs/notes.txt and 4 MiB of random data ("
      << format_bytes(static_cast<double>(allocated_bytes(volume))) << " allocated).\n\n";
  if (const int rc = copy_part(sh, volume); rc != 0) return rc;

  // Root mounts the views' filesystems through loop devices; anyone else needs fuse2fs.
  const bool loop = ::geteuid() == 0 && fs::exists("/dev/loop-control");
  if (!loop && !in_path("fuse2fs"))
    return fail(kVerb, "fuse2fs is needed to open the volumes without root (apt install fuse2fs)");
  KcopyfsMount kmount(sh, "state", "mnt");
  if (const int rc = snapshot_part(sh, kmount, loop, volume); rc != 0) return rc;
  if (const int rc = mirror_part(sh, volume); rc != 0) return rc;

  std::cout << "== 4. Status" << std::endl;
  if (!sh.ok({"kcopyfs", "status", "mnt"})) return 1;
  if (!sh.ok({"kcopyfs", "status", "mnt", "--json"})) return 1;

  std::cout << "\n== 5. Removing everything" << std::endl;
  for (const char* name : {"before", "data", "mirror"}) {
    if (!sh.ok({"kcopyfs", "remove", "mnt", name})) return 1;
  }
  if (!kmount.unmount(false)) return 1;
  return 0;
}

}  // namespace

int run_demo(const std::vector<std::string>& args) {
  if (!args.empty() && (args[0] == "--help" || args[0] == "-h")) {
    std::cout
        << "Usage: kcopyfs demo [DIR]\n"
           "Shows kcopyfs at work in a new directory under DIR (default /tmp): builds a sample ext4 image,\n"
           "copies it to two destinations with one read, mounts kcopyfs, snapshots the mounted volume, "
           "changes\n"
           "it and shows the snapshot still holds the old files (loop mounts as root, fuse2fs otherwise),\n"
           "resyncs a mirror with progress, prints the status, and removes all it made. Exit 0 when every\n"
           "check passed.\n";
    return 0;
  }
  if (args.size() > 1) return fail(kVerb, "takes at most one DIR");
  const fs::path base = fs::absolute(args.empty() ? fs::temp_directory_path() : fs::path(args[0]));
  std::error_code ec;
  fs::create_directories(base, ec);
  if (ec) return fail(kVerb, "create " + base.string() + ": " + ec.message());
  std::string tmpl = (base / "kcopyfs-demo.XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr)
    return fail(kVerb, "mkdtemp in " + base.string() + ": " + std::strerror(errno));
  // Declared first, so it runs last: after every mount of the story is undone.
  Cleanup cleanup{tmpl};
  // Ctrl-C ends the story at the next step instead of leaving mounts behind.
  struct sigaction action {};
  action.sa_handler = on_interrupt;
  ::sigaction(SIGINT, &action, nullptr);
  ::sigaction(SIGTERM, &action, nullptr);
  int rc = 1;
  try {
    rc = run_story(Shell(tmpl));
  } catch (const std::exception& e) {
    rc = fail(kVerb, e.what());
  }
  std::cout << "Removing " << cleanup.dir << std::endl;
  return rc;
}

}  // namespace kcopyfs::cli
