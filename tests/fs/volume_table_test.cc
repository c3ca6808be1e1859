// The volume table: its INI text (exact layout, round trip), every rejection of the parser, and the atomic
// save.
#include "fs/daemon/volume_table.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <sstream>
#include <string>

#include "tests/support/test_support.h"

namespace kcopyfs::daemon {
namespace {

namespace fs = std::filesystem;

const char kSource[] = "/state/kcopyfs.conf";

// Every field, in a form EXPECT_EQ can diff: the structs have no operator==.
std::string dump(const VolumeTable& t) {
  std::ostringstream out;
  for (const auto& o : t.origins) out << "origin{" << o.name << "|" << o.device << "}\n";
  for (const auto& s : t.snapshots)
    out << "snapshot{" << s.name << "|" << s.origin << "|" << s.cow << "|" << s.cow_is_default << s.persistent
        << s.writable << s.merging << "|" << s.chunk_size.value() << "}\n";
  for (const auto& m : t.mirrors) {
    out << "mirror{" << m.name << "|";
    for (const auto& leg : m.legs) out << leg << ";";
    out << "|" << m.region_size.value() << "|" << m.log << "|" << m.log_device << "|" << m.log_is_default;
    if (m.throttle_percent != 100 || m.throttle_bytes_per_second != 0)
      out << "|throttle " << m.throttle_percent << "% " << m.throttle_bytes_per_second << "B/s";
    out << "}\n";
  }
  return out.str();
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

VolumeTable full_table() {
  VolumeTable t;
  t.origins.push_back({"data.v1", "/dev/loop0"});
  t.origins.push_back({"home-2", "/var/lib/my images/home disk.img"});
  SnapshotEntry s1;
  s1.name = "data.v1.snap.1";
  s1.origin = "data.v1";
  s1.cow = "/var/lib/kcopyfs/data.v1.snap.1.cow";
  s1.cow_is_default = true;
  s1.chunk_size = Bytes(65536);
  t.snapshots.push_back(s1);
  SnapshotEntry s2;
  s2.name = "h_2";
  s2.origin = "home-2";
  s2.cow = "/mnt/cow store/h=2.cow";  // '=' after the first one belongs to the value
  s2.persistent = false;
  s2.writable = true;
  s2.merging = true;
  t.snapshots.push_back(s2);
  MirrorEntry m0;
  m0.name = "m0";
  m0.legs = {"/dev/loop3", "/dev/loop1", "/srv/leg two.img"};
  m0.log_device = "/var/lib/kcopyfs/m0.log";
  m0.log_is_default = true;
  m0.throttle_percent = 40;
  m0.throttle_bytes_per_second = 64 << 20;
  t.mirrors.push_back(m0);
  MirrorEntry m1;
  m1.name = "m1.";  // ends in '.', which the section header must preserve
  m1.legs = {"/dev/a", "/dev/b"};
  m1.region_size = Bytes(4096);
  m1.log = "core";
  t.mirrors.push_back(m1);
  return t;
}

// Parses text that must be refused; checks EINVAL, one line, the source and every expected fragment.
void expect_rejected(const std::string& text, std::initializer_list<std::string> fragments) {
  SCOPED_TRACE("text:\n" + text);
  auto r = parse_volume_table(text, kSource);
  ASSERT_FALSE(r.ok()) << "accepted: " << dump(r.value());
  EXPECT_EQ(r.error().errno_value(), EINVAL);
  const std::string& msg = r.error().message();
  EXPECT_EQ(msg.rfind(std::string(kSource) + ": ", 0), 0u) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  for (const auto& f : fragments)
    EXPECT_NE(msg.find(f), std::string::npos) << "'" << f << "' not in: " << msg;
}

// --- format and round trip ---

TEST(VolumeTableFormat, RoundTripsAllKinds) {
  const VolumeTable t = full_table();
  const std::string text = format_volume_table(t);
  auto back = parse_volume_table(text, kSource);
  ASSERT_TRUE(back.ok()) << back.error().message() << "\n" << text;
  EXPECT_EQ(dump(back.value()), dump(t));
  EXPECT_EQ(format_volume_table(back.value()), text);
}

TEST(VolumeTableFormat, ExactText) {
  VolumeTable t;
  t.origins.push_back({"data", "/dev/loop0"});
  SnapshotEntry s;
  s.name = "s1";
  s.origin = "data";
  s.cow = "/var/lib/kcopyfs/s1.cow";
  s.cow_is_default = true;
  t.snapshots.push_back(s);
  MirrorEntry disk;
  disk.name = "m0";
  disk.legs = {"/dev/loop1", "/dev/loop2"};
  disk.log_device = "/var/lib/kcopyfs/m0.log";
  disk.log_is_default = true;
  t.mirrors.push_back(disk);
  MirrorEntry core;
  core.name = "m1.";
  core.legs = {"/dev/loop3", "/dev/loop4"};
  core.region_size = Bytes(1 << 20);
  core.log = "core";
  core.throttle_percent = 25;
  t.mirrors.push_back(core);
  EXPECT_EQ(format_volume_table(t),
            "# kcopyfs volume table: rewritten by the daemon on every change; edit only while unmounted.\n"
            "\n"
            "[origin.data]\n"
            "device = /dev/loop0\n"
            "\n"
            "[snapshot.s1]\n"
            "origin = data\n"
            "cow = /var/lib/kcopyfs/s1.cow\n"
            "cow_is_default = true\n"
            "persistent = true\n"
            "writable = false\n"
            "chunk_size = 4096\n"
            "merging = false\n"
            "\n"
            "[mirror.m0]\n"
            "leg = /dev/loop1\n"
            "leg = /dev/loop2\n"
            "region_size = 524288\n"
            "log = disk\n"
            "log_device = /var/lib/kcopyfs/m0.log\n"
            "log_is_default = true\n"
            "\n"
            "[mirror.m1..]\n"
            "leg = /dev/loop3\n"
            "leg = /dev/loop4\n"
            "region_size = 1048576\n"
            "log = core\n"
            "log_is_default = false\n"
            "throttle_percent = 25\n");
}

TEST(VolumeTableFormat, EmptyTableIsHeaderOnlyAndParsesEmpty) {
  const std::string text = format_volume_table(VolumeTable{});
  EXPECT_EQ(text,
            "# kcopyfs volume table: rewritten by the daemon on every change; edit only while unmounted.\n");
  auto back = parse_volume_table(text, kSource);
  ASSERT_TRUE(back.ok()) << back.error().message();
  EXPECT_EQ(dump(back.value()), "");
  auto blank = parse_volume_table("", kSource);
  ASSERT_TRUE(blank.ok()) << blank.error().message();
  EXPECT_EQ(dump(blank.value()), "");
}

// --- parse: what a person may write ---

TEST(VolumeTableParse, AcceptsCommentsWhitespaceAndDefaults) {
  const std::string text =
      "# hand-written\n"
      "\n"
      "  [origin.o]   # the origin\n"
      "\tdevice=   /srv/my disk.img  \t\n"
      "[snapshot.s]\n"
      "chunk_size = 8192 # bytes\n"
      "cow = /c\n"
      "origin = o\n"
      "[mirror.m]\n"
      "log = core\n"
      "leg = /l1\n"
      "region_size = 512\n"
      "leg = /l0\n";
  auto r = parse_volume_table(text, kSource);
  ASSERT_TRUE(r.ok()) << r.error().message();
  // Optional keys take the struct's defaults; legs keep file order.
  EXPECT_EQ(dump(r.value()),
            "origin{o|/srv/my disk.img}\n"
            "snapshot{s|o|/c|0100|8192}\n"
            "mirror{m|/l1;/l0;|512|core||0}\n");
}

TEST(VolumeTableParse, SnapshotMayPrecedeItsOrigin) {
  auto r =
      parse_volume_table("[snapshot.s]\norigin=o\ncow=/c\nchunk_size=4096\n[origin.o]\ndevice=/d\n", kSource);
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->snapshots.size(), 1u);
}

// --- parse: rejections ---

TEST(VolumeTableParse, RejectsLineWithoutEquals) {
  expect_rejected("[origin.o]\ndevice /dev/loop0\n", {"invalid line", "device /dev/loop0"});
  expect_rejected("[origin.o\ndevice = /d\n", {"invalid line", "[origin.o"});
  // Boost 1.74 loops forever formatting its own message for a line holding its placeholder (found by
  // fuzzing).
  expect_rejected("[origin.a]\nx%invalid_line%\n", {"invalid line", "x%invalid_line%"});
}

TEST(VolumeTableParse, RejectsKeyOutsideSection) {
  expect_rejected("device = /dev/loop0\n[origin.o]\ndevice = /d\n", {"'device'", "outside"});
}

TEST(VolumeTableParse, RejectsUnknownKind) {
  expect_rejected("[volume.v]\ndevice = /d\n", {"[volume.v]", "unknown kind 'volume'"});
  expect_rejected("[origin]\ndevice = /d\n", {"invalid name ''"});  // "origin.device": no NAME at all
}

TEST(VolumeTableParse, RejectsUnknownKey) {
  expect_rejected("[origin.o]\ndevice = /d\nsize = 4096\n", {"[origin.o]", "unknown key 'size'"});
  expect_rejected("[snapshot.s]\norigin=o\ncow=/c\nchunk_size=4096\nleg=/x\n", {"[snapshot.s]", "'leg'"});
  expect_rejected("[mirror.m]\nleg=/a\nleg=/b\nregion_size=512\nlog=core\ncow=/c\n", {"[mirror.m]", "'cow'"});
  expect_rejected("[origin.o]\n= /d\n", {"unknown key ''"});
}

TEST(VolumeTableParse, RejectsMissingRequiredKeys) {
  const std::string origin = "[origin.o]\ndevice = /d\n";
  expect_rejected("[mirror.m]\nlog_is_default = true\n", {"[mirror.m]", "at least 2 'leg'", "has 0"});
  expect_rejected(origin + "[snapshot.s]\ncow=/c\nchunk_size=4096\n",
                  {"[snapshot.s]", "missing key 'origin'"});
  expect_rejected(origin + "[snapshot.s]\norigin=o\nchunk_size=4096\n",
                  {"[snapshot.s]", "missing key 'cow'"});
  expect_rejected(origin + "[snapshot.s]\norigin=o\ncow=/c\n", {"[snapshot.s]", "missing key 'chunk_size'"});
  expect_rejected("[origin.o]\ndevice =\n", {"[origin.o]", "empty value for key 'device'"});
  expect_rejected("[mirror.m]\nleg=/a\nregion_size=512\nlog=core\n",
                  {"[mirror.m]", "at least 2 'leg'", "has 1"});
  expect_rejected("[mirror.m]\nleg=/a\nleg=\nregion_size=512\nlog=core\n",
                  {"[mirror.m]", "empty value", "'leg'"});
  expect_rejected("[mirror.m]\nleg=/a\nleg=/b\nlog=core\n", {"[mirror.m]", "missing key 'region_size'"});
  expect_rejected("[mirror.m]\nleg=/a\nleg=/b\nregion_size=512\n", {"[mirror.m]", "missing key 'log'"});
  expect_rejected("[mirror.m]\nleg=/a\nleg=/b\nregion_size=512\nlog=disk\n",
                  {"[mirror.m]", "missing key 'log_device'"});
}

TEST(VolumeTableParse, RejectsEmptySections) {
  // PO returns nothing for a section without keys: the target must not vanish silently.
  expect_rejected("[origin.o]\n# device = /d\n", {"[origin.o]", "missing key 'device'"});
  expect_rejected("[origin.o]\n[origin.p]\ndevice = /d\n", {"[origin.o]", "missing key 'device'"});
  expect_rejected("[origin.p]\ndevice = /d\n  [snapshot.s] # later\n",
                  {"[snapshot.s]", "missing key 'origin'"});
  expect_rejected("[origin.p]\ndevice = /d\n[mirror.m]\n", {"[mirror.m]", "at least 2 'leg'", "has 0"});
  expect_rejected("[origin.p]\ndevice = /d\n[thing.t]", {"[thing.t]", "unknown kind 'thing'"});
  expect_rejected("[origin.p]\ndevice = /d\n[origin.p]\n", {"[origin.p]", "duplicate name 'p'"});
}

TEST(VolumeTableParse, RejectsDuplicateKeys) {
  expect_rejected("[origin.o]\ndevice = /a\ndevice = /b\n", {"[origin.o]", "duplicate key 'device'"});
  expect_rejected(
      "[origin.o]\ndevice=/d\n[snapshot.s]\norigin=o\ncow=/c\nchunk_size=4096\nwritable=true\n"
      "writable=false\n",
      {"[snapshot.s]", "duplicate key 'writable'"});
  expect_rejected("[mirror.m]\nleg=/a\nleg=/b\nregion_size=512\nlog=core\nlog=disk\n",
                  {"[mirror.m]", "duplicate key 'log'"});
}

TEST(VolumeTableParse, RejectsBadNumbers) {
  for (const std::string bad : {"4k", "-1", "+4096", "0x1000", "4096.0", "18446744073709551616", "4 096"}) {
    expect_rejected("[origin.o]\ndevice=/d\n[snapshot.s]\norigin=o\ncow=/c\nchunk_size=" + bad + "\n",
                    {"[snapshot.s]", "bad number '" + bad + "'", "chunk_size"});
  }
  expect_rejected("[origin.o]\ndevice=/d\n[snapshot.s]\norigin=o\ncow=/c\nchunk_size=\n",
                  {"bad number ''", "chunk_size"});
  expect_rejected("[mirror.m]\nleg=/a\nleg=/b\nregion_size=1M\nlog=core\n",
                  {"[mirror.m]", "bad number '1M'"});
}

TEST(VolumeTableParse, RejectsSizesThatAreNotPositive) {
  expect_rejected("[origin.o]\ndevice=/d\n[snapshot.s]\norigin=o\ncow=/c\nchunk_size=0\n",
                  {"[snapshot.s]", "'chunk_size' must be positive"});
  expect_rejected("[mirror.m]\nleg=/a\nleg=/b\nregion_size=0\nlog=core\n",
                  {"[mirror.m]", "'region_size' must be positive"});
}

TEST(VolumeTableParse, RejectsBadBooleans) {
  for (const std::string key : {"cow_is_default", "persistent", "writable", "merging"}) {
    for (const std::string bad : {"yes", "1", "True", "FALSE", ""}) {
      expect_rejected(
          "[origin.o]\ndevice=/d\n[snapshot.s]\norigin=o\ncow=/c\nchunk_size=4096\n" + key + "=" + bad + "\n",
          {"[snapshot.s]", "bad boolean '" + bad + "'", key});
    }
  }
  expect_rejected("[mirror.m]\nleg=/a\nleg=/b\nregion_size=512\nlog=core\nlog_is_default=on\n",
                  {"[mirror.m]", "bad boolean 'on'", "log_is_default"});
}

TEST(VolumeTableParse, ThrottleKeysAreOptionalAndChecked) {
  auto r = parse_volume_table(
      "[mirror.m]\nleg=/a\nleg=/b\nregion_size=512\nlog=core\nthrottle_rate=1048576\n", kSource);
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(dump(r.value()), "mirror{m|/a;/b;|512|core||0|throttle 100% 1048576B/s}\n");
  const std::string base = "[mirror.m]\nleg=/a\nleg=/b\nregion_size=512\nlog=core\n";
  expect_rejected(base + "throttle_percent=101\n", {"[mirror.m]", "'throttle_percent' must be 1 to 100"});
  expect_rejected(base + "throttle_percent=0\n", {"[mirror.m]", "'throttle_percent' must be positive"});
  expect_rejected(base + "throttle_percent=50%\n", {"[mirror.m]", "bad number '50%'", "decimal percent"});
  expect_rejected(base + "throttle_rate=0\n", {"[mirror.m]", "'throttle_rate' must be positive"});
  expect_rejected(base + "throttle_rate=1M\n", {"[mirror.m]", "bad number '1M'", "decimal bytes per second"});
}

TEST(VolumeTableParse, RejectsBadLog) {
  expect_rejected("[mirror.m]\nleg=/a\nleg=/b\nregion_size=512\nlog=memory\n",
                  {"[mirror.m]", "bad log 'memory'"});
  expect_rejected("[mirror.m]\nleg=/a\nleg=/b\nregion_size=512\nlog=core\nlog_device=/l\n",
                  {"[mirror.m]", "log_device", "core"});
}

TEST(VolumeTableParse, RejectsInvalidNames) {
  expect_rejected("[origin.]\ndevice=/d\n", {"invalid name ''"});
  expect_rejected("[origin..hidden]\ndevice=/d\n", {"invalid name '.hidden'"});
  expect_rejected("[origin.a/b]\ndevice=/d\n", {"invalid name 'a/b'"});
  expect_rejected("[origin.a b]\ndevice=/d\n", {"invalid name 'a b'"});
  const std::string long_name(65, 'x');
  expect_rejected("[snapshot." + long_name + "]\norigin=o\n", {"invalid name '" + long_name + "'"});
  // Bytes that would break the one-line message are escaped.
  expect_rejected("[origin.a\rb]\ndevice=/d\n", {"invalid name 'a\\x0db'"});
}

TEST(VolumeTableParse, RejectsDuplicateNamesAcrossKinds) {
  expect_rejected("[origin.x]\ndevice=/d\n[mirror.x]\nleg=/a\nleg=/b\nregion_size=512\nlog=core\n",
                  {"[mirror.x]", "duplicate name 'x'"});
  expect_rejected("[origin.x]\ndevice=/d\n[snapshot.x]\norigin=x\ncow=/c\nchunk_size=4096\n",
                  {"[snapshot.x]", "duplicate name 'x'"});
  // The same section twice, apart: PO would silently merge nothing, the parser must notice.
  expect_rejected("[origin.x]\ndevice=/d\n[origin.y]\ndevice=/e\n[origin.x]\ndevice=/f\n",
                  {"[origin.x]", "duplicate name 'x'"});
}

TEST(VolumeTableParse, RejectsSnapshotOfMissingOrigin) {
  expect_rejected("[origin.o]\ndevice=/d\n[snapshot.s]\norigin=p\ncow=/c\nchunk_size=4096\n",
                  {"[snapshot.s]", "origin 'p' is not an [origin.X] section"});
  // A mirror of that name is not an origin.
  expect_rejected(
      "[mirror.p]\nleg=/a\nleg=/b\nregion_size=512\nlog=core\n"
      "[snapshot.s]\norigin=p\ncow=/c\nchunk_size=4096\n",
      {"[snapshot.s]", "origin 'p'"});
}

// --- save and load ---

TEST(VolumeTableSave, WritesAtomicallyAndLoadsBack) {
  test::TempDir dir;
  const std::string path = dir.file("kcopyfs.conf");
  write_text(path, "old\n");
  const VolumeTable t = full_table();
  Status s = save_volume_table(path, t);
  ASSERT_TRUE(s.ok()) << s.error().message();
  EXPECT_EQ(read_text(path), format_volume_table(t));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  auto back = load_volume_table(path);
  ASSERT_TRUE(back.ok()) << back.error().message();
  EXPECT_EQ(dump(back.value()), dump(t));
  // A stale temporary file from a crash is overwritten, not appended to.
  write_text(path + ".tmp", std::string(10000, 'z'));
  ASSERT_TRUE(save_volume_table(path, VolumeTable{}).ok());
  EXPECT_EQ(read_text(path), format_volume_table(VolumeTable{}));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

TEST(VolumeTableSave, MissingDirectoryFails) {
  test::TempDir dir;
  const std::string path = dir.file("no-such-dir/kcopyfs.conf");
  Status s = save_volume_table(path, full_table());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().errno_value(), ENOENT);
  EXPECT_NE(s.error().message().find(path + ".tmp"), std::string::npos) << s.error().message();
  EXPECT_FALSE(fs::exists(dir.file("no-such-dir")));
}

// A read-only mount for root (who ignores permission bits), a read-only directory otherwise.
class ReadOnlyDir {
 public:
  explicit ReadOnlyDir(const fs::path& dir) : dir_(dir) {
    if (test::running_as_root()) {
      if (::mount("tmpfs", dir.c_str(), "tmpfs", 0, "size=1m,mode=0700") != 0) return;
      mounted_ = true;
    }
  }
  ~ReadOnlyDir() {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
    ::chmod(dir_.c_str(), 0700);
  }
  bool usable() const { return mounted_ || !test::running_as_root(); }
  // Makes the directory read-only once its contents are in place.
  bool seal() {
    if (mounted_) return ::mount(nullptr, dir_.c_str(), nullptr, MS_REMOUNT | MS_RDONLY, nullptr) == 0;
    return ::chmod(dir_.c_str(), 0500) == 0;
  }

 private:
  fs::path dir_;
  bool mounted_ = false;
};

TEST(VolumeTableSave, ReadOnlyDirectoryFailsAndKeepsFile) {
  test::TempDir dir;
  const fs::path sub = dir.path() / "state";
  fs::create_directory(sub);
  ReadOnlyDir ro(sub);
  if (!ro.usable()) GTEST_SKIP() << "root without CAP_SYS_ADMIN: cannot make a read-only directory";
  const std::string path = (sub / "kcopyfs.conf").string();
  const std::string before = "# an older table\n[origin.keep]\ndevice = /dev/keep\n";
  write_text(path, before);
  ASSERT_TRUE(ro.seal()) << std::strerror(errno);
  Status s = save_volume_table(path, full_table());
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(s.error().errno_value() == EACCES || s.error().errno_value() == EROFS) << s.error().message();
  EXPECT_NE(s.error().message().find("open " + path + ".tmp"), std::string::npos) << s.error().message();
  EXPECT_EQ(read_text(path), before);
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

TEST(VolumeTableSave, WriteFailureRemovesTmpAndKeepsFile) {
  test::TempDir dir;
  const std::string path = dir.file("kcopyfs.conf");
  const std::string before = "# an older table\n";
  write_text(path, before);
  // RLIMIT_FSIZE makes write() fail with EFBIG, for root too; SIGXFSZ would otherwise kill the test.
  struct rlimit old_limit {};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  struct sigaction ignore {
  }, old_action{};
  ignore.sa_handler = SIG_IGN;
  ASSERT_EQ(::sigaction(SIGXFSZ, &ignore, &old_action), 0);
  struct rlimit small = old_limit;
  small.rlim_cur = 64;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  Status s = save_volume_table(path, full_table());
  ::setrlimit(RLIMIT_FSIZE, &old_limit);
  ::sigaction(SIGXFSZ, &old_action, nullptr);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().errno_value(), EFBIG);
  EXPECT_NE(s.error().message().find("write " + path + ".tmp"), std::string::npos) << s.error().message();
  EXPECT_EQ(read_text(path), before);
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

TEST(VolumeTableSave, RenameFailureRemovesTmp) {
  test::TempDir dir;
  const std::string path = dir.file("kcopyfs.conf");
  fs::create_directory(path);  // rename() cannot replace a directory with a file
  write_text(path + "/inside", "x");
  Status s = save_volume_table(path, full_table());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message().find("rename " + path + ".tmp"), std::string::npos) << s.error().message();
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  EXPECT_EQ(read_text(path + "/inside"), "x");
}

TEST(VolumeTableSave, RefusesValuesTheFormatCannotHold) {
  test::TempDir dir;
  const std::string path = dir.file("kcopyfs.conf");
  write_text(path, "before\n");
  auto expect_refused = [&](const VolumeTable& t, std::initializer_list<std::string> fragments) {
    Status s = save_volume_table(path, t);
    ASSERT_FALSE(s.ok()) << dump(t);
    EXPECT_EQ(s.error().errno_value(), EINVAL);
    EXPECT_EQ(s.error().message().rfind(path + ": ", 0), 0u) << s.error().message();
    EXPECT_EQ(s.error().message().find('\n'), std::string::npos) << s.error().message();
    for (const auto& f : fragments)
      EXPECT_NE(s.error().message().find(f), std::string::npos)
          << "'" << f << "' not in " << s.error().message();
    EXPECT_EQ(read_text(path), "before\n");
    EXPECT_FALSE(fs::exists(path + ".tmp"));
  };
  for (const std::string bad : {"/dev/a#b", "/dev/a\nb", " /dev/a", "/dev/a ", "/dev/a\t", "\r/dev/a"}) {
    SCOPED_TRACE(bad);
    VolumeTable t = full_table();
    t.origins[1].device = bad;
    expect_refused(t, {"[origin.home-2]", "'device'"});
    t = full_table();
    t.snapshots[0].cow = bad;
    expect_refused(t, {"[snapshot.data.v1.snap.1]", "'cow'"});
    t = full_table();
    t.mirrors[0].legs[2] = bad;
    expect_refused(t, {"[mirror.m0]", "'leg'"});
    t = full_table();
    t.mirrors[0].log_device = bad;
    expect_refused(t, {"[mirror.m0]", "'log_device'"});
  }
  // Whatever the parser would refuse is refused before anything is written.
  VolumeTable t = full_table();
  t.snapshots[0].origin = "nowhere";
  expect_refused(t, {"origin 'nowhere'"});
  t = full_table();
  t.mirrors[1].name = "data.v1";
  expect_refused(t, {"duplicate name 'data.v1'"});
  t = full_table();
  t.origins[0].name = "a/b";
  expect_refused(t, {"invalid name 'a/b'"});
  t = full_table();
  t.mirrors[1].log_device = "/l";  // core: the layout has no place for it
  expect_refused(t, {"[mirror.m1.]", "log_device"});
  t = full_table();
  t.origins[0].device.clear();
  expect_refused(t, {"empty value"});
}

TEST(VolumeTableLoad, MissingFileIsEmpty) {
  test::TempDir dir;
  auto r = load_volume_table(dir.file("kcopyfs.conf"));
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(dump(r.value()), "");
}

TEST(VolumeTableLoad, ErrorsNameThePath) {
  test::TempDir dir;
  const std::string path = dir.file("kcopyfs.conf");
  write_text(path, "[origin.o]\ndevice = /d\n[snapshot.s]\norigin = o\n");
  auto r = load_volume_table(path);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().errno_value(), EINVAL);
  EXPECT_EQ(r.error().message().rfind(path + ": [snapshot.s]: missing key", 0), 0u) << r.error().message();
  // Not ENOENT: a directory is a read error, not an empty table.
  auto d = load_volume_table(dir.path().string());
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.error().errno_value(), EISDIR);
  EXPECT_NE(d.error().message().find(dir.path().string()), std::string::npos) << d.error().message();
}

// --- names ---

TEST(VolumeTableName, ValidTargetName) {
  EXPECT_TRUE(valid_target_name("a"));
  EXPECT_TRUE(valid_target_name("Data.v1_2-x"));
  EXPECT_TRUE(valid_target_name("a."));
  EXPECT_TRUE(valid_target_name("a..b"));
  EXPECT_TRUE(valid_target_name("-"));
  EXPECT_TRUE(valid_target_name(std::string(64, 'n')));
  EXPECT_FALSE(valid_target_name(std::string(65, 'n')));
  EXPECT_FALSE(valid_target_name(""));
  EXPECT_FALSE(valid_target_name("."));
  EXPECT_FALSE(valid_target_name(".."));
  EXPECT_FALSE(valid_target_name(".hidden"));
  EXPECT_FALSE(valid_target_name("a/b"));
  EXPECT_FALSE(valid_target_name("/"));
  EXPECT_FALSE(valid_target_name(std::string_view("a\0b", 3)));
  EXPECT_FALSE(valid_target_name(std::string_view("\0", 1)));
  EXPECT_FALSE(valid_target_name("a b"));
  EXPECT_FALSE(valid_target_name("a#b"));
  EXPECT_FALSE(valid_target_name("caf\xc3\xa9"));
}

}  // namespace
}  // namespace kcopyfs::daemon
