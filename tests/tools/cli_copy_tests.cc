// End-to-end tests of `kcopyfs copy` (interface.md, "The copy engine, as a tool"): the built binary is run as
// a child process with its stdout, stderr, exit status and resource usage captured.
#include <dirent.h>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <iostream>
#include <optional>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "engine/file_device.h"
#include "tests/support/run_command.h"
#include "tests/support/test_support.h"

namespace kcopyfs {
namespace {

using test::TempDir;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * 1024;
constexpr auto kTimeout = std::chrono::seconds(60);
constexpr const char* kPrefix = "kcopyfs: copy: ";

using RunResult = test::CommandResult;

// Runs the kcopyfs binary with args, waiting at most kTimeout (then it is killed and the test fails).
RunResult run_kcopyfs(const std::vector<std::string>& args) {
  std::vector<std::string> argv{KCOPYFS_BINARY};
  argv.insert(argv.end(), args.begin(), args.end());
  RunResult result = test::run_command(argv, kTimeout);
  if (!result.started) ADD_FAILURE() << result.err;
  if (result.timed_out)
    ADD_FAILURE() << "kcopyfs did not finish within " << kTimeout.count()
                  << " s; stderr so far: " << result.err;
  return result;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

uint64_t size_of(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return static_cast<uint64_t>(st.st_size);
}

uint64_t allocated_bytes(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return static_cast<uint64_t>(st.st_blocks) * 512;
}

std::vector<std::byte> whole(const std::string& path) { return test::read_file(path, 0, size_of(path)); }

std::vector<std::byte> zeros(uint64_t n) { return std::vector<std::byte>(n); }

std::set<std::string> list_dir(const std::string& dir) {
  std::set<std::string> names;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) names.insert(e->d_name);
    }
    ::closedir(d);
  }
  return names;
}

// Everything about a file that a refused command must leave as it was.
struct FileState {
  uint64_t size = 0;
  timespec mtime{};
  std::vector<std::byte> content;
  static FileState of(const std::string& path) {
    struct stat st {};
    EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
    return FileState{static_cast<uint64_t>(st.st_size), st.st_mtim, whole(path)};
  }
  bool operator==(const FileState& o) const {
    return size == o.size && mtime.tv_sec == o.mtime.tv_sec && mtime.tv_nsec == o.mtime.tv_nsec &&
           content == o.content;
  }
};

// A tmpfs of a given size mounted on a directory, unmounted on destruction (even when the test fails).
class TmpfsMount {
 public:
  TmpfsMount(const std::string& dir, const std::string& size) : dir_(dir) {
    ::mkdir(dir.c_str(), 0755);
    const std::string options = "size=" + size;
    if (::mount("tmpfs", dir.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, options.c_str()) == 0) {
      mounted_ = true;
    } else {
      error_ = std::strerror(errno);
    }
  }
  ~TmpfsMount() {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  TmpfsMount(const TmpfsMount&) = delete;
  TmpfsMount& operator=(const TmpfsMount&) = delete;
  bool mounted() const { return mounted_; }
  const std::string& error() const { return error_; }

 private:
  std::string dir_;
  bool mounted_ = false;
  std::string error_;
};

// The contract of every refusal: exactly one line on stderr starting "kcopyfs: copy: ", a non-zero exit.
void expect_one_line_refusal(const RunResult& r, const std::string& must_mention = "") {
  EXPECT_NE(r.exit_code, 0) << "stderr: " << r.err;
  EXPECT_FALSE(r.timed_out);
  const auto lines = lines_of(r.err);
  ASSERT_EQ(lines.size(), 1u) << "stderr: [" << r.err << "]";
  EXPECT_TRUE(r.err.ends_with("\n")) << r.err;
  EXPECT_TRUE(lines[0].starts_with(kPrefix)) << lines[0];
  EXPECT_GT(lines[0].size(), std::strlen(kPrefix) + 5) << "the line must say what and why: " << lines[0];
  if (!must_mention.empty()) {
    EXPECT_NE(lines[0].find(must_mention), std::string::npos) << lines[0];
  }
}

class CliCopyTest : public ::testing::Test {
 protected:
  std::string at(const std::string& name) const { return dir_.file(name); }
  TempDir dir_;
};

// --- copies that succeed

TEST_F(CliCopyTest, ThreeDestinationsGetExactBytesAtTheirOffsets) {
  test::write_pattern_file(at("src"), 4 * kMiB, 1);
  test::write_pattern_file(at("a"), 8 * kMiB, 2);  // keeps its size; bytes [1M, 3M) replaced
  test::write_pattern_file(at("b"), 4 * kMiB, 3);  // extended to 5M; bytes [3M, 5M) written
  // "c" is missing: created with a 512K hole before the data.
  auto r =
      run_kcopyfs({"copy", at("src") + ":512K:2M", at("a") + ":1M", at("b") + ":3M:2M", at("c") + ":512K"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  EXPECT_EQ(r.out, "");

  const auto data = test::pattern(1, 512 * kKiB, 2 * kMiB);
  EXPECT_EQ(size_of(at("a")), 8 * kMiB);
  EXPECT_TRUE(test::read_file(at("a"), 0, kMiB) == test::pattern(2, 0, kMiB));
  EXPECT_TRUE(test::read_file(at("a"), kMiB, 2 * kMiB) == data);
  EXPECT_TRUE(test::read_file(at("a"), 3 * kMiB, 5 * kMiB) == test::pattern(2, 3 * kMiB, 5 * kMiB));

  EXPECT_EQ(size_of(at("b")), 5 * kMiB);
  EXPECT_TRUE(test::read_file(at("b"), 0, 3 * kMiB) == test::pattern(3, 0, 3 * kMiB));
  EXPECT_TRUE(test::read_file(at("b"), 3 * kMiB, 2 * kMiB) == data);

  ASSERT_TRUE(exists(at("c"))) << "a missing destination must be created";
  EXPECT_EQ(size_of(at("c")), 512 * kKiB + 2 * kMiB);
  EXPECT_TRUE(test::read_file(at("c"), 0, 512 * kKiB) == zeros(512 * kKiB));
  EXPECT_TRUE(test::read_file(at("c"), 512 * kKiB, 2 * kMiB) == data);

  EXPECT_TRUE(whole(at("src")) == test::pattern(1, 0, 4 * kMiB)) << "the source changed";
}

TEST_F(CliCopyTest, SparseKeepsHoles) {
  constexpr uint64_t kSize = 8 * kMiB;
  test::make_sparse_file(at("src"), kSize);
  test::write_file(at("src"), kMiB, test::pattern(4, 0, kMiB));
  test::write_file(at("src"), 5 * kMiB, test::pattern(5, 0, kMiB));
  ASSERT_LE(allocated_bytes(at("src")), 2 * kMiB + 64 * kKiB);
  auto expected = zeros(kSize);
  std::ranges::copy(test::pattern(4, 0, kMiB), expected.begin() + kMiB);
  std::ranges::copy(test::pattern(5, 0, kMiB), expected.begin() + 5 * kMiB);
  test::write_pattern_file(at("full"), kSize, 6);  // fully allocated: its holes must be punched

  auto r = run_kcopyfs({"copy", "--sparse", at("src"), at("new"), at("full")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* name : {"new", "full"}) {
    EXPECT_TRUE(whole(at(name)) == expected) << name;
    EXPECT_LE(allocated_bytes(at(name)), 2 * kMiB + 64 * kKiB)
        << name << ": the source's holes must stay holes";
    UniqueFd fd(::open(at(name).c_str(), O_RDONLY | O_CLOEXEC));
    EXPECT_EQ(::lseek(fd.get(), 0, SEEK_DATA), static_cast<off_t>(kMiB))
        << name << " should start with a hole";
  }

  // Without --sparse the same copy allocates every byte: the check above is what --sparse changes.
  auto dense = run_kcopyfs({"copy", at("src"), at("dense1"), at("dense2")});
  ASSERT_EQ(dense.exit_code, 0) << dense.err;
  EXPECT_TRUE(whole(at("dense1")) == expected);
  EXPECT_GE(allocated_bytes(at("dense1")), kSize);
}

TEST_F(CliCopyTest, ProgressOnANonTerminalPrintsPlainPercentLines) {
  test::write_pattern_file(at("src"), 8 * kMiB, 7);
  auto r = run_kcopyfs({"copy", "--progress", at("src"), at("d1"), at("d2")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err.find('\r'), std::string::npos) << "no carriage returns off a terminal";
  EXPECT_EQ(r.err.find('\033'), std::string::npos) << "no escape sequences off a terminal";
  const auto lines = lines_of(r.err);
  ASSERT_FALSE(lines.empty()) << "--progress printed nothing";
  const std::regex line_re(R"(^copy: (\d{1,3})% \(.+ of .+, .+/s\)$)");
  int previous = -1;
  for (const auto& line : lines) {
    std::smatch m;
    ASSERT_TRUE(std::regex_match(line, m, line_re)) << "not a plain progress line: [" << line << "]";
    const int percent = std::stoi(m[1]);
    EXPECT_GE(percent, previous) << "progress went backwards";
    previous = percent;
  }
  EXPECT_TRUE(lines.back().starts_with("copy: 100% (8.0 MiB of 8.0 MiB")) << lines.back();
  EXPECT_TRUE(whole(at("d2")) == test::pattern(7, 0, 8 * kMiB));
}

TEST_F(CliCopyTest, RateCapsTheCopy) {
  constexpr uint64_t kSize = 16 * kMiB;
  test::write_pattern_file(at("src"), kSize, 8);
  auto r = run_kcopyfs({"copy", "--rate", "8M", at("src"), at("d1"), at("d2")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // 16 MiB at 8 MiB/s: about 2 s (the first piece may start at once).
  EXPECT_GE(r.seconds, 1.5) << "--rate 8M copied 16 MiB in " << r.seconds << " s";
  EXPECT_TRUE(whole(at("d1")) == test::pattern(8, 0, kSize));
  EXPECT_TRUE(whole(at("d2")) == test::pattern(8, 0, kSize));
}

TEST_F(CliCopyTest, PerDestinationReportWhenOneDestinationFails) {
  if (!test::running_as_root()) GTEST_SKIP() << "mounting a tmpfs needs root";
  constexpr uint64_t kSize = 8 * kMiB;
  test::write_pattern_file(at("src"), kSize, 9);
  TmpfsMount small(at("small"), "4M");
  ASSERT_TRUE(small.mounted()) << "mount tmpfs: " << small.error();
  const std::string failing = at("small") + "/dst";
  const std::string healthy = at("disk-dst");

  auto r = run_kcopyfs({"copy", at("src"), failing, healthy});
  EXPECT_NE(r.exit_code, 0) << "a destination that ran out of space must fail the copy";
  const auto lines = lines_of(r.err);
  bool failing_reported = false, healthy_ok = false;
  for (const auto& line : lines) {
    EXPECT_TRUE(line.starts_with(kPrefix)) << line;
    if (line.find(failing) != std::string::npos && line.find("fail") != std::string::npos)
      failing_reported = true;
    if (line == kPrefix + healthy + ": ok") healthy_ok = true;
  }
  EXPECT_TRUE(failing_reported) << "stderr must name the failing destination: " << r.err;
  EXPECT_TRUE(healthy_ok) << "stderr must say the other destination is ok: " << r.err;
  EXPECT_TRUE(whole(healthy) == test::pattern(9, 0, kSize)) << "the healthy destination must get every byte";
}

// --- the source is read once for every destination

// Sectors read from a block device so far (/sys/class/block/NAME/stat, third field), for a device path.
std::optional<uint64_t> sectors_read(const std::string& device_path) {
  const std::string name = device_path.substr(device_path.rfind('/') + 1);
  const auto text = test::read_file("/sys/class/block/" + name + "/stat", 0, 4096);
  std::istringstream in(std::string(reinterpret_cast<const char*>(text.data()), text.size()));
  uint64_t ios = 0, merges = 0, sectors = 0;
  if (!(in >> ios >> merges >> sectors)) return std::nullopt;
  return sectors;
}

TEST_F(CliCopyTest, SourceIsReadOnceForThreeDestinations) {
  constexpr uint64_t kSize = 64 * kMiB;
  std::vector<std::byte> data(kSize);
  std::mt19937_64 rng(42);
  for (uint64_t i = 0; i < kSize; i += 8) {
    const uint64_t v = rng();
    std::memcpy(data.data() + i, &v, 8);
  }
  test::write_file(at("src"), 0, data);
  {
    UniqueFd fd(::open(at("src").c_str(), O_RDONLY | O_CLOEXEC));
    ASSERT_EQ(::fsync(fd.get()), 0);  // clean: the copy's reads are its own, not writeback of ours
  }
  {
    // With O_DIRECT every read reaches the disk and is counted; without it page-cache hits would hide them.
    auto probe = FileDevice::open(at("src"), OpenOptions{Access::read_only, Sharing::none});
    ASSERT_TRUE(probe.ok());
    if (!probe.value()->direct_io()) GTEST_SKIP() << "the test directory's filesystem has no O_DIRECT";
  }
  // As root the source is also seen through a loop device, whose block-layer counters tell exactly how much
  // of the source was read, free of the child's other reads (its executable and libraries, which come from
  // disk again whenever the page cache has dropped them).
  std::optional<test::LoopDevice> loop;
  if (test::running_as_root()) loop.emplace(at("src"));
  const std::string source = loop ? loop->path() : at("src");
  const auto device_before = loop ? sectors_read(loop->path()) : std::nullopt;

  auto r = run_kcopyfs({"copy", source, at("d1"), at("d2"), at("d3")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // wait4's rusage covers every thread of the child, io_uring's workers included (they are its threads).
  const uint64_t read_bytes = static_cast<uint64_t>(r.usage.ru_inblock) * 512;
  const uint64_t written_bytes = static_cast<uint64_t>(r.usage.ru_oublock) * 512;
  std::cout << "source " << kSize << " bytes; the child read " << read_bytes << " and wrote " << written_bytes
            << " bytes\n";
  EXPECT_LT(read_bytes, kSize + kSize / 2) << "the source must be read once, not once per destination";
  EXPECT_GE(read_bytes, kSize) << "the copy's reads were not accounted to it: the check above proves nothing";
  EXPECT_GE(written_bytes, 3 * kSize) << "every destination must be written";
  if (loop) {
    const auto device_after = sectors_read(loop->path());
    ASSERT_TRUE(device_before && device_after) << "no block-layer counters for " << loop->path();
    const uint64_t device_read = (*device_after - *device_before) * 512;
    std::cout << loop->path() << " (the source) was read for " << device_read << " bytes\n";
    EXPECT_GE(device_read, kSize);
    EXPECT_LT(device_read, kSize + kSize / 2) << "the source must be read once, not once per destination";
  }
  for (const char* name : {"d1", "d2", "d3"}) EXPECT_TRUE(whole(at(name)) == data) << name;
}

// --- refusals

struct BadInput {
  const char* name;
  std::vector<std::string> args;  // "@x" stands for the test directory's file x
  const char* must_mention;
};

void PrintTo(const BadInput& input, std::ostream* os) { *os << input.name; }

class CliCopyBadInputTest : public CliCopyTest, public ::testing::WithParamInterface<BadInput> {};

TEST_P(CliCopyBadInputTest, OneLineNonZeroExitNothingTouched) {
  test::write_pattern_file(at("src"), kMiB, 10);
  test::write_pattern_file(at("odd"), 1000, 11);
  test::write_pattern_file(at("d1"), kMiB, 12);
  ASSERT_EQ(::link(at("d1").c_str(), at("d1-hard").c_str()), 0);
  ASSERT_EQ(::symlink(at("d1").c_str(), at("d1-sym").c_str()), 0);
  ASSERT_EQ(::symlink(at("src").c_str(), at("src-sym").c_str()), 0);
  ASSERT_EQ(::mkdir(at("sub").c_str(), 0755), 0);
  const auto names_before = list_dir(dir_.path());
  const auto d1_before = FileState::of(at("d1"));
  const auto src_before = FileState::of(at("src"));

  std::vector<std::string> args{"copy"};
  for (const auto& a : GetParam().args) args.push_back(a.starts_with("@") ? at(a.substr(1)) : a);
  auto r = run_kcopyfs(args);
  expect_one_line_refusal(r, GetParam().must_mention);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(list_dir(dir_.path()), names_before) << "a refused copy must create nothing";
  EXPECT_TRUE(FileState::of(at("d1")) == d1_before) << "a refused copy must not touch a destination";
  EXPECT_TRUE(FileState::of(at("src")) == src_before);
}

const BadInput kBadInputs[] = {
    {"MissingSource", {"@no-such-file", "@new", "@d1"}, "No such file"},
    {"SourceSizeNotMultipleOf512", {"@odd", "@new", "@d1"}, "512"},
    {"SourceOffsetNotMultipleOf512", {"@src:100", "@new", "@d1"}, "512"},
    {"DestinationOffsetNotMultipleOf512", {"@src", "@new", "@d1:1000"}, "512"},
    {"LengthNotMultipleOf512", {"@src:0:1000", "@new", "@d1"}, "512"},
    {"LengthBeyondTheSource", {"@src:512K:1M", "@new", "@d1"}, "beyond"},
    {"DestinationLengthDiffers", {"@src", "@new", "@d1:0:512K"}, "differs"},
    {"BadSizeSuffixInDestination", {"@src", "@new", "@d1:10Q"}, "10Q"},
    {"BadSizeSuffixInSource", {"@src:0:10Q", "@new", "@d1"}, "10Q"},
    {"BadSizeSuffixInRate", {"--rate", "10Q", "@src", "@new", "@d1"}, "10Q"},
    {"NineDestinations",
     {"@src", "@new", "@d1", "@n3", "@n4", "@n5", "@n6", "@n7", "@n8", "@n9"},
     "8 destinations"},
    {"DestinationNamedTwice", {"@src", "@new", "@d1", "@d1"}, "twice"},
    {"DestinationNamedTwiceViaHardLink", {"@src", "@new", "@d1", "@d1-hard"}, "twice"},
    {"DestinationNamedTwiceViaSymlink", {"@src", "@new", "@d1-sym", "@d1"}, "twice"},
    {"MissingDestinationNamedTwice", {"@src", "@new", "@d1", "@new"}, "twice"},
    {"MissingDestinationNamedTwiceViaDotDot", {"@src", "@new", "@sub/../new"}, "twice"},
    {"DestinationIsTheSource", {"@src", "@new", "@src"}, "source"},
    {"DestinationIsTheSourceViaSymlink", {"@src", "@new", "@src-sym"}, "source"},
    {"ThrottleZero", {"--throttle", "0", "@src", "@new", "@d1"}, "--throttle"},
    {"Throttle101", {"--throttle", "101", "@src", "@new", "@d1"}, "--throttle"},
    {"RateZero", {"--rate", "0", "@src", "@new", "@d1"}, "--rate"},
    {"UnknownOption", {"--frobnicate", "@src", "@new", "@d1"}, "frobnicate"},
    {"OnlyOnePath", {"@src"}, "DEST"},
    {"NoPaths", {}, "SOURCE"},
};

INSTANTIATE_TEST_SUITE_P(Cases, CliCopyBadInputTest, ::testing::ValuesIn(kBadInputs),
                         [](const ::testing::TestParamInfo<BadInput>& info) {
                           return std::string(info.param.name);
                         });

TEST_F(CliCopyTest, HeldDestinationIsRefusedAndTheOthersAreUndone) {
  test::write_pattern_file(at("src"), kMiB, 13);
  test::write_pattern_file(at("short"), 512 * kKiB, 14);  // would be extended to 1M before the refusal
  test::write_pattern_file(at("held"), kMiB, 15);
  auto holder = FileDevice::open(at("held"), OpenOptions{});  // exclusive: an OFD write lock
  ASSERT_TRUE(holder.ok()) << holder.error().message();
  const auto names_before = list_dir(dir_.path());
  const auto held_before = FileState::of(at("held"));

  auto r = run_kcopyfs({"copy", at("src"), at("new"), at("short"), at("held")});
  expect_one_line_refusal(r, at("held"));
  EXPECT_NE(r.err.find("held"), std::string::npos) << r.err;
  EXPECT_FALSE(exists(at("new"))) << "a destination the refused run created must be removed";
  EXPECT_EQ(list_dir(dir_.path()), names_before);
  EXPECT_EQ(size_of(at("short")), 512 * kKiB) << "a destination the refused run extended must be restored";
  EXPECT_TRUE(whole(at("short")) == test::pattern(14, 0, 512 * kKiB));
  EXPECT_TRUE(FileState::of(at("held")) == held_before);

  // Once released, the same command works.
  holder.value().reset();
  auto ok = run_kcopyfs({"copy", at("src"), at("new"), at("short"), at("held")});
  ASSERT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_TRUE(whole(at("held")) == test::pattern(13, 0, kMiB));
}

// --- help

TEST(CliHelpTest, CopyHelpPrintsUsage) {
  auto r = run_kcopyfs({"copy", "--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.err, "");
  EXPECT_NE(r.out.find("Usage: kcopyfs copy"), std::string::npos) << r.out;
  for (const char* option : {"--progress", "--throttle", "--rate", "--sparse"})
    EXPECT_NE(r.out.find(option), std::string::npos) << option << " missing from:\n" << r.out;
}

TEST(CliHelpTest, TopLevelHelpListsTheVerbs) {
  auto r = run_kcopyfs({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("Usage: kcopyfs"), std::string::npos) << r.out;
  const std::regex copy_verb(R"((^|\n)\s+copy\s+\S)");
  EXPECT_TRUE(std::regex_search(r.out, copy_verb)) << r.out;
  const std::regex demo_verb(R"((^|\n)\s+demo\s+\S)");
  EXPECT_TRUE(std::regex_search(r.out, demo_verb)) << r.out;
}

}  // namespace
}  // namespace kcopyfs
