// Tests of the daemon verbs of the kcopyfs CLI that need no daemon (interface.md): every verb's --help, and
// the one-line errors of arguments that are wrong before any daemon is asked (sizes, NAMEs, leg counts,
// options), of paths that are not kcopyfs mounts, and of the fstab mount helper. The built binary runs as a
// child process with its stdout, stderr and exit status captured.

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "tests/support/run_command.h"
#include "tests/support/test_support.h"

namespace kcopyfs {
namespace {

using test::TempDir;

constexpr auto kTimeout = std::chrono::seconds(30);

using RunResult = test::CommandResult;

// Runs program with args (stdin from /dev/null), waiting at most kTimeout (then it is killed and the test
// fails).
RunResult run(const std::string& program, const std::vector<std::string>& args) {
  std::vector<std::string> argv{program};
  argv.insert(argv.end(), args.begin(), args.end());
  RunResult result = test::run_command(argv, kTimeout);
  if (!result.started) ADD_FAILURE() << result.err;
  if (result.timed_out) ADD_FAILURE() << program << " did not finish within " << kTimeout.count() << " s";
  return result;
}

RunResult kcopyfs(const std::vector<std::string>& args) { return run(KCOPYFS_BINARY, args); }

// The command failed with exactly one line on stderr, starting with prefix (and containing `mentions`).
void expect_one_line_error(const RunResult& r, const std::string& prefix, const std::string& mentions = "") {
  EXPECT_NE(r.exit_code, 0) << r.err;
  EXPECT_NE(r.exit_code, -1) << "killed or timed out";
  EXPECT_EQ(r.err.rfind(prefix, 0), 0u) << "stderr: " << r.err;
  ASSERT_FALSE(r.err.empty());
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "not one line: " << r.err;
  if (!mentions.empty()) {
    EXPECT_NE(r.err.find(mentions), std::string::npos) << "stderr: " << r.err;
  }
  EXPECT_EQ(r.out, "");
}

// --- help

struct HelpCase {
  std::vector<std::string> verb;
  std::vector<std::string> options;  // each must appear in the help
};

TEST(CliUsageTest, EveryVerbHasHelp) {
  const std::vector<HelpCase> cases = {
      {{"mount"}, {"--state", "--foreground", "--allow-other", "MOUNTPOINT"}},
      {{"umount"}, {"MOUNTPOINT"}},
      {{"origin", "add"}, {"MOUNTPOINT NAME DEVICE"}},
      {{"snapshot", "create"}, {"--chunk-size", "--cow ", "--cow-size", "--transient", "--writable"}},
      {{"snapshot", "attach"}, {"--cow", "--writable"}},
      {{"snapshot", "merge"}, {"--wait"}},
      {{"mirror", "create"}, {"--region-size", "--log", "--nosync", "DEVICE DEVICE..."}},
      {{"mirror", "resync"}, {"--wait"}},
      {{"mirror", "replace"}, {"OLD_DEVICE NEW_DEVICE"}},
      {{"mirror", "throttle"}, {"--percent", "--rate"}},
      {{"remove"}, {"MOUNTPOINT NAME"}},
      {{"status"}, {"--json", "[NAME]"}},
  };
  for (const auto& c : cases) {
    std::string name;
    for (const auto& w : c.verb) name += std::string(name.empty() ? "" : " ") + w;
    for (const char* help : {"--help", "-h"}) {
      auto args = c.verb;
      args.push_back(help);
      const auto r = kcopyfs(args);
      EXPECT_EQ(r.exit_code, 0) << name << " " << help << ": " << r.err;
      EXPECT_EQ(r.err, "") << name;
      EXPECT_EQ(r.out.rfind("Usage: kcopyfs " + name, 0), 0u) << name << ":\n" << r.out;
      for (const auto& option : c.options)
        EXPECT_NE(r.out.find(option), std::string::npos) << option << " missing from " << name << ":\n"
                                                         << r.out;
    }
  }
}

TEST(CliUsageTest, VerbsWithSubVerbsListThem) {
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {"origin", {"add"}},
      {"snapshot", {"create", "attach", "merge"}},
      {"mirror", {"create", "resync", "replace", "throttle"}}};
  for (const auto& [verb, subs] : cases) {
    const auto r = kcopyfs({verb, "--help"});
    EXPECT_EQ(r.exit_code, 0) << verb;
    EXPECT_EQ(r.out.rfind("Usage: kcopyfs " + verb, 0), 0u) << r.out;
    for (const auto& s : subs)
      EXPECT_NE(r.out.find("  " + s + " "), std::string::npos) << verb << ":\n" << r.out;
  }
}

TEST(CliUsageTest, TopLevelHelpListsTheDaemonVerbs) {
  const auto r = kcopyfs({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  for (const char* verb : {"mount", "umount", "origin", "snapshot", "mirror", "remove", "status"})
    EXPECT_NE(r.out.find(std::string("\n  ") + verb + " "), std::string::npos) << verb << ":\n" << r.out;
}

TEST(CliUsageTest, MissingOrUnknownSubVerbIsAUsageError) {
  for (const char* verb : {"origin", "snapshot", "mirror"}) {
    const std::string prefix = std::string("kcopyfs: ") + verb + ": ";
    auto r = kcopyfs({verb});
    expect_one_line_error(r, prefix);
    EXPECT_EQ(r.exit_code, 2);
    r = kcopyfs({verb, "frobnicate", "/tmp"});
    expect_one_line_error(r, prefix, "frobnicate");
    EXPECT_EQ(r.exit_code, 2);
  }
}

// --- arguments checked before any daemon is asked (the mountpoint /tmp is not even looked at)

TEST(CliUsageTest, BadNamesAreRefused) {
  const std::string long_name(65, 'a');
  for (const std::string& bad : {std::string(".."), std::string("a/b"), long_name, std::string(".x"),
                                 std::string(""), std::string("a b"), std::string("é")}) {
    SCOPED_TRACE("name '" + bad + "'");
    expect_one_line_error(kcopyfs({"origin", "add", "/tmp", bad, "/dev/null"}), "kcopyfs: origin add: ");
    expect_one_line_error(kcopyfs({"snapshot", "create", "/tmp", "o", bad}), "kcopyfs: snapshot create: ");
    expect_one_line_error(kcopyfs({"snapshot", "create", "/tmp", bad, "s"}), "kcopyfs: snapshot create: ");
    expect_one_line_error(kcopyfs({"snapshot", "attach", "/tmp", "o", bad, "--cow", "/x"}),
                          "kcopyfs: snapshot attach: ");
    expect_one_line_error(kcopyfs({"snapshot", "merge", "/tmp", bad}), "kcopyfs: snapshot merge: ");
    expect_one_line_error(kcopyfs({"mirror", "create", "/tmp", bad, "/a", "/b"}), "kcopyfs: mirror create: ");
    expect_one_line_error(kcopyfs({"mirror", "resync", "/tmp", bad}), "kcopyfs: mirror resync: ");
    expect_one_line_error(kcopyfs({"mirror", "replace", "/tmp", bad, "/a", "/b"}),
                          "kcopyfs: mirror replace: ");
    expect_one_line_error(kcopyfs({"mirror", "throttle", "/tmp", bad}), "kcopyfs: mirror throttle: ");
    expect_one_line_error(kcopyfs({"remove", "/tmp", bad}), "kcopyfs: remove: ");
  }
}

TEST(CliUsageTest, NameErrorsSayWhatANameIs) {
  expect_one_line_error(kcopyfs({"origin", "add", "/tmp", ".x", "/dev/null"}),
                        "kcopyfs: origin add: ", "'.x'");
  expect_one_line_error(kcopyfs({"remove", "/tmp", "a/b"}), "kcopyfs: remove: ", "A-Z a-z 0-9");
}

TEST(CliUsageTest, BadChunkSizesAreRefused) {
  for (const char* bad : {"3K", "2K", "1M", "0", "abc", "4X", "6K", ""}) {
    SCOPED_TRACE(bad);
    expect_one_line_error(kcopyfs({"snapshot", "create", "/tmp", "o", "s", "--chunk-size", bad}),
                          "kcopyfs: snapshot create: ", "--chunk-size");
  }
}

TEST(CliUsageTest, BadCowSizesAreRefused) {
  for (const char* bad : {"0", "1Q", "-1", "100"}) {
    SCOPED_TRACE(bad);
    expect_one_line_error(kcopyfs({"snapshot", "create", "/tmp", "o", "s", "--cow-size", bad}),
                          "kcopyfs: snapshot create: ", "--cow-size");
  }
  expect_one_line_error(kcopyfs({"snapshot", "create", "/tmp", "o", "s", "--cow", "/x", "--cow-size", "1G"}),
                        "kcopyfs: snapshot create: ", "--cow");
}

TEST(CliUsageTest, BadRegionSizesAreRefused) {
  for (const char* bad : {"100K", "0", "256", "abc", "1Q"}) {
    SCOPED_TRACE(bad);
    expect_one_line_error(kcopyfs({"mirror", "create", "/tmp", "m", "/a", "/b", "--region-size", bad}),
                          "kcopyfs: mirror create: ", "--region-size");
  }
}

TEST(CliUsageTest, WrongLegCountsAreRefused) {
  expect_one_line_error(kcopyfs({"mirror", "create", "/tmp", "m", "/a"}), "kcopyfs: mirror create: ", "legs");
  expect_one_line_error(kcopyfs({"mirror", "create", "/tmp", "m"}), "kcopyfs: mirror create: ", "legs");
  std::vector<std::string> ten{"mirror", "create", "/tmp", "m"};
  for (int i = 0; i < 10; ++i) ten.push_back("/leg" + std::to_string(i));
  expect_one_line_error(kcopyfs(ten), "kcopyfs: mirror create: ", "legs");
  expect_one_line_error(kcopyfs({"mirror", "create", "/tmp", "m", "/a", "/tmp/../a"}),
                        "kcopyfs: mirror create: ", "twice");
}

TEST(CliUsageTest, BadLogIsRefused) {
  for (const char* bad : {"ram", "Disk", ""}) {
    SCOPED_TRACE(bad);
    expect_one_line_error(kcopyfs({"mirror", "create", "/tmp", "m", "/a", "/b", "--log", bad}),
                          "kcopyfs: mirror create: ", "--log");
  }
}

TEST(CliUsageTest, BadThrottleIsRefused) {
  expect_one_line_error(kcopyfs({"mirror", "throttle", "/tmp", "m", "--percent", "0"}),
                        "kcopyfs: mirror throttle: ", "--percent");
  expect_one_line_error(kcopyfs({"mirror", "throttle", "/tmp", "m", "--percent", "101"}),
                        "kcopyfs: mirror throttle: ", "--percent");
  expect_one_line_error(kcopyfs({"mirror", "throttle", "/tmp", "m", "--rate", "fast"}),
                        "kcopyfs: mirror throttle: ", "--rate");
}

TEST(CliUsageTest, SameOldAndNewLegIsRefused) {
  expect_one_line_error(kcopyfs({"mirror", "replace", "/tmp", "m", "/a/b", "/a/./b"}),
                        "kcopyfs: mirror replace: ");
}

TEST(CliUsageTest, UnknownOptionsAreRefused) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"mount", "--bogus", "/tmp"}, "mount"},
      {{"umount", "--bogus", "/tmp"}, "umount"},
      {{"origin", "add", "/tmp", "o", "/dev/null", "--bogus"}, "origin add"},
      {{"snapshot", "create", "/tmp", "o", "s", "--bogus"}, "snapshot create"},
      {{"snapshot", "attach", "/tmp", "o", "s", "--cow", "/x", "--bogus"}, "snapshot attach"},
      {{"snapshot", "merge", "/tmp", "s", "--bogus"}, "snapshot merge"},
      {{"mirror", "create", "/tmp", "m", "/a", "/b", "--bogus"}, "mirror create"},
      {{"mirror", "resync", "/tmp", "m", "--bogus"}, "mirror resync"},
      {{"mirror", "replace", "/tmp", "m", "/a", "/b", "--bogus"}, "mirror replace"},
      {{"mirror", "throttle", "/tmp", "m", "--bogus"}, "mirror throttle"},
      {{"remove", "/tmp", "x", "--bogus"}, "remove"},
      {{"status", "/tmp", "--bogus"}, "status"},
  };
  for (const auto& [args, verb] : cases) {
    SCOPED_TRACE(verb);
    expect_one_line_error(kcopyfs(args), "kcopyfs: " + verb + ": ", "bogus");
  }
}

TEST(CliUsageTest, MissingOrExtraArgumentsAreRefused) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"mount"}, "mount"},
      {{"mount", "/tmp", "/tmp"}, "mount"},
      {{"mount", "--state"}, "mount"},
      {{"umount"}, "umount"},
      {{"origin", "add", "/tmp", "o"}, "origin add"},
      {{"origin", "add", "/tmp", "o", "/a", "/b"}, "origin add"},
      {{"snapshot", "create", "/tmp", "o"}, "snapshot create"},
      {{"snapshot", "create", "/tmp", "o", "s", "--chunk-size"}, "snapshot create"},
      {{"snapshot", "attach", "/tmp", "o", "s"}, "snapshot attach"},  // --cow is required
      {{"snapshot", "merge", "/tmp"}, "snapshot merge"},
      {{"mirror", "resync", "/tmp"}, "mirror resync"},
      {{"mirror", "replace", "/tmp", "m", "/a"}, "mirror replace"},
      {{"mirror", "throttle", "/tmp"}, "mirror throttle"},
      {{"remove", "/tmp"}, "remove"},
      {{"remove", "/tmp", "a", "b"}, "remove"},
      {{"status"}, "status"},
      {{"status", "/tmp", "a", "b"}, "status"},
  };
  for (const auto& [args, verb] : cases) {
    std::string line;
    for (const auto& a : args) line += a + " ";
    SCOPED_TRACE(line);
    expect_one_line_error(kcopyfs(args), "kcopyfs: " + verb + ": ");
  }
}

// --- paths that are not kcopyfs mounts

TEST(CliUsageTest, VerbsOnANonMountFailInOneLine) {
  TempDir dir;
  for (const std::string& place : {std::string("/tmp"), dir.path().string(), dir.file("missing")}) {
    SCOPED_TRACE(place);
    expect_one_line_error(kcopyfs({"status", place}), "kcopyfs: status: ");
    expect_one_line_error(kcopyfs({"status", place, "--json"}), "kcopyfs: status: ");
    expect_one_line_error(kcopyfs({"umount", place}), "kcopyfs: umount: ");
    expect_one_line_error(kcopyfs({"origin", "add", place, "o", "/dev/null"}), "kcopyfs: origin add: ");
    expect_one_line_error(kcopyfs({"remove", place, "o"}), "kcopyfs: remove: ");
    expect_one_line_error(kcopyfs({"snapshot", "merge", place, "s", "--wait"}), "kcopyfs: snapshot merge: ");
  }
}

TEST(CliUsageTest, MountNeedsAnExistingDirectory) {
  TempDir dir;
  expect_one_line_error(kcopyfs({"mount", "--state", dir.file("state"), dir.file("missing")}),
                        "kcopyfs: mount: ", dir.file("missing"));
  std::ofstream(dir.file("plain")) << "x";
  expect_one_line_error(kcopyfs({"mount", "--state", dir.file("state"), dir.file("plain")}),
                        "kcopyfs: mount: ", "not a directory");
  // Nothing was started, so nothing made the state directory.
  EXPECT_FALSE(std::filesystem::exists(dir.file("state")));
}

TEST(CliUsageTest, MountRefusesAStateDirThatIsAFile) {
  TempDir dir;
  std::filesystem::create_directory(dir.file("mnt"));
  std::ofstream(dir.file("state")) << "x";
  expect_one_line_error(kcopyfs({"mount", "--state", dir.file("state"), dir.file("mnt")}),
                        "kcopyfs: mount: ", dir.file("state"));
}

// --- the fstab helper (mount.fuse.kcopyfs, beside the binary in the build tree)

TEST(MountHelperTest, RefusesUnknownOptions) {
  TempDir dir;
  std::filesystem::create_directory(dir.file("mnt"));
  for (const char* options : {"rw,frob", "ro", "allow_other,uid=5"}) {
    SCOPED_TRACE(options);
    const auto r = run(KCOPYFS_MOUNT_HELPER, {dir.file("state"), dir.file("mnt"), "-o", options});
    expect_one_line_error(r, "mount.fuse.kcopyfs: ");
  }
  expect_one_line_error(run(KCOPYFS_MOUNT_HELPER, {dir.file("state")}), "mount.fuse.kcopyfs: ");
  expect_one_line_error(run(KCOPYFS_MOUNT_HELPER, {dir.file("state"), dir.file("mnt"), "-x"}),
                        "mount.fuse.kcopyfs: ");
}

TEST(MountHelperTest, AcceptsMountsOwnOptions) {
  TempDir dir;
  std::filesystem::create_directory(dir.file("mnt"));
  // -f (fake): mount(8) asks the helper to check its arguments and mount nothing.
  const auto r = run(KCOPYFS_MOUNT_HELPER,
                     {dir.file("state"), dir.file("mnt"), "-f", "-o",
                      "rw,defaults,allow_other,nofail,_netdev,noauto,user,users,x-systemd.automount"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  EXPECT_FALSE(std::filesystem::exists(dir.file("state")));
}

TEST(MountHelperTest, PassesWriteBackAndIoPollToKcopyfsMount) {
  TempDir dir;
  std::filesystem::create_directory(dir.file("mnt"));
  const auto fake =
      run(KCOPYFS_MOUNT_HELPER, {dir.file("state"), dir.file("mnt"), "-f", "-o", "write_back=8M,io_poll=1"});
  EXPECT_EQ(fake.exit_code, 0) << fake.err;
  // kcopyfs mount checks the values: its refusals show that they reached it.
  const auto r = run(KCOPYFS_MOUNT_HELPER, {dir.file("state"), dir.file("mnt"), "-o", "rw,write_back=lots"});
  expect_one_line_error(r, "kcopyfs: mount: --write-back: 'lots'");
  const auto p = run(KCOPYFS_MOUNT_HELPER, {dir.file("state"), dir.file("mnt"), "-o", "io_poll=often"});
  expect_one_line_error(p, "kcopyfs: mount: ", "io-poll");
  EXPECT_FALSE(std::filesystem::exists(dir.file("state")));
}

TEST(MountHelperTest, RunsKcopyfsMount) {
  TempDir dir;
  // The mountpoint is missing, so kcopyfs mount itself (found beside the helper) reports it.
  const auto r = run(KCOPYFS_MOUNT_HELPER, {dir.file("state"), dir.file("missing"), "-o", "rw,allow_other"});
  expect_one_line_error(r, "kcopyfs: mount: ", dir.file("missing"));
}

}  // namespace
}  // namespace kcopyfs
