#include "fs/daemon/volume_table.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/program_options.hpp>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <optional>
#include <set>
#include <sstream>
#include <utility>

#include "engine/unique_fd.h"

namespace kcopyfs::daemon {

namespace {

namespace po = boost::program_options;

constexpr size_t kMaxNameLength = 64;
constexpr std::string_view kHeader =
    "# kcopyfs volume table: rewritten by the daemon on every change; edit only while unmounted.\n";

// Messages are one line: bytes a terminal would act on are shown as \xNN.
std::string printable(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

// PO keeps a section "[P]" as the prefix "P." unless P already ends in '.', so a name ending in '.' gets one
// more '.' in its header to come back unchanged.
std::string section_header(std::string_view kind, const std::string& name) {
  std::string header = "[" + std::string(kind) + "." + name;
  if (!name.empty() && name.back() == '.') header += '.';
  return header + "]\n";
}

void put(std::string& out, std::string_view key, std::string_view value) {
  out.append(key).append(" = ").append(value).append("\n");
}

const char* bool_text(bool b) { return b ? "true" : "false"; }

// One section as PO returns it: the run of consecutive options that share "KIND.NAME.".
struct Section {
  std::string kind;
  std::string name;
  std::vector<std::pair<std::string, std::string>> keys;  // in file order
};

class SectionParser {
 public:
  SectionParser(const Section& section, const std::string& source) : section_(section), source_(source) {}

  Error fault(const std::string& what) const {
    return Error::invalid(source_ + ": [" + printable(section_.kind) + "." + printable(section_.name) +
                          "]: " + what);
  }

  // Checks that every key is in `allowed` and that only `repeatable` keys repeat.
  std::optional<Error> check_keys(std::initializer_list<std::string_view> allowed,
                                  std::string_view repeatable = {}) const {
    std::set<std::string> seen;
    for (const auto& [key, value] : section_.keys) {
      bool known = false;
      for (std::string_view a : allowed) known = known || key == a;
      if (!known) return fault("unknown key '" + printable(key) + "'");
      if (key != repeatable && !seen.insert(key).second) return fault("duplicate key '" + key + "'");
    }
    return std::nullopt;
  }

  const std::string* find(std::string_view key) const {
    for (const auto& [k, v] : section_.keys)
      if (k == key) return &v;
    return nullptr;
  }

  // A path or a name: required, non-empty.
  Result<std::string> text(std::string_view key) const {
    const std::string* v = find(key);
    if (v == nullptr) return fault("missing key '" + std::string(key) + "'");
    if (v->empty()) return fault("empty value for key '" + std::string(key) + "'");
    return *v;
  }

  Result<bool> boolean(std::string_view key, bool fallback) const {
    const std::string* v = find(key);
    if (v == nullptr) return fallback;
    if (*v == "true") return true;
    if (*v == "false") return false;
    return fault("bad boolean '" + printable(*v) + "' for key '" + std::string(key) + "' (true or false)");
  }

  // A positive decimal number (of unit, named in the message), required.
  Result<uint64_t> positive(std::string_view key, const char* unit) const {
    const std::string* v = find(key);
    if (v == nullptr) return fault("missing key '" + std::string(key) + "'");
    uint64_t n = 0;
    const char* end = v->data() + v->size();
    auto [ptr, ec] = std::from_chars(v->data(), end, n);
    if (v->empty() || ec != std::errc() || ptr != end)
      return fault("bad number '" + printable(*v) + "' for key '" + std::string(key) + "' (decimal " + unit +
                   ")");
    if (n == 0) return fault("key '" + std::string(key) + "' must be positive");
    return n;
  }
  // A positive decimal byte count, required.
  Result<Bytes> size(std::string_view key) const {
    auto n = positive(key, "bytes");
    if (!n) return n.error();
    return Bytes(n.value());
  }

 private:
  const Section& section_;
  const std::string& source_;
};

Result<OriginEntry> parse_origin(const SectionParser& p, const Section& s) {
  if (auto e = p.check_keys({"device"})) return *e;
  auto device = p.text("device");
  if (!device) return device.error();
  return OriginEntry{s.name, std::move(device).value()};
}

Result<SnapshotEntry> parse_snapshot(const SectionParser& p, const Section& s) {
  if (auto e = p.check_keys(
          {"origin", "cow", "cow_is_default", "persistent", "writable", "chunk_size", "merging"}))
    return *e;
  SnapshotEntry entry;
  entry.name = s.name;
  auto origin = p.text("origin");
  if (!origin) return origin.error();
  entry.origin = std::move(origin).value();
  auto cow = p.text("cow");
  if (!cow) return cow.error();
  entry.cow = std::move(cow).value();
  auto chunk = p.size("chunk_size");
  if (!chunk) return chunk.error();
  entry.chunk_size = chunk.value();
  for (auto [key, field] :
       {std::pair{"cow_is_default", &entry.cow_is_default}, std::pair{"persistent", &entry.persistent},
        std::pair{"writable", &entry.writable}, std::pair{"merging", &entry.merging}}) {
    auto b = p.boolean(key, *field);
    if (!b) return b.error();
    *field = b.value();
  }
  return entry;
}

Result<MirrorEntry> parse_mirror(const SectionParser& p, const Section& s) {
  if (auto e = p.check_keys(
          {"leg", "region_size", "log", "log_device", "log_is_default", "throttle_percent", "throttle_rate"},
          "leg"))
    return *e;
  MirrorEntry entry;
  entry.name = s.name;
  for (const auto& [key, value] : s.keys) {
    if (key != "leg") continue;
    if (value.empty()) return p.fault("empty value for key 'leg'");
    entry.legs.push_back(value);
  }
  if (entry.legs.size() < 2)
    return p.fault("needs at least 2 'leg' keys, has " + std::to_string(entry.legs.size()));
  auto region = p.size("region_size");
  if (!region) return region.error();
  entry.region_size = region.value();
  auto log = p.text("log");
  if (!log) return log.error();
  entry.log = std::move(log).value();
  if (entry.log == "disk") {
    auto device = p.text("log_device");
    if (!device) return device.error();
    entry.log_device = std::move(device).value();
  } else if (entry.log == "core") {
    if (p.find("log_device") != nullptr) return p.fault("key 'log_device' given with log = core");
  } else {
    return p.fault("bad log '" + printable(entry.log) + "' (disk or core)");
  }
  auto is_default = p.boolean("log_is_default", false);
  if (!is_default) return is_default.error();
  entry.log_is_default = is_default.value();
  if (p.find("throttle_percent") != nullptr) {
    auto percent = p.positive("throttle_percent", "percent");
    if (!percent) return percent.error();
    if (percent.value() > 100) {
      std::string why = "key 'throttle_percent' must be 1 to 100, not ";
      why += std::to_string(percent.value());
      return p.fault(why);
    }
    entry.throttle_percent = static_cast<unsigned>(percent.value());
  }
  if (p.find("throttle_rate") != nullptr) {
    auto rate = p.positive("throttle_rate", "bytes per second");
    if (!rate) return rate.error();
    entry.throttle_bytes_per_second = rate.value();
  }
  return entry;
}

// Splits PO's flat "KIND.NAME.key" options back into sections, in file order.
Result<std::vector<Section>> read_sections(std::string_view text, const std::string& source) {
  std::vector<Section> sections;
  try {
    std::istringstream in{std::string(text)};
    const po::parsed_options parsed = po::parse_config_file(in, po::options_description{}, true);
    for (const po::option& option : parsed.options) {
      const std::string& full = option.string_key;
      const size_t first = full.find('.');
      const size_t last = full.rfind('.');
      if (first == std::string::npos)
        return Error::invalid(source + ": key '" + printable(full) + "' outside a [KIND.NAME] section");
      std::string kind = full.substr(0, first);
      std::string name = first < last ? full.substr(first + 1, last - first - 1) : std::string();
      std::string key = full.substr(last + 1);
      std::string value = option.value.empty() ? std::string() : option.value.front();
      if (sections.empty() || sections.back().kind != kind || sections.back().name != name)
        sections.push_back(Section{std::move(kind), std::move(name), {}});
      sections.back().keys.emplace_back(std::move(key), std::move(value));
    }
  } catch (const po::invalid_config_file_syntax& e) {
    // Not e.what(): Boost 1.74 loops forever substituting a line that itself holds "%invalid_line%".
    return Error::invalid(source + ": invalid line '" + printable(e.tokens()) +
                          "': neither 'key = value' nor '[KIND.NAME]'");
  } catch (const std::exception& e) {
    return Error::invalid(source + ": " + printable(e.what()));
  }
  return sections;
}

// PO yields nothing for a section without keys, which would silently drop the target: this finds such
// headers with PO's own line rules (cut at '#', trim " \t\r\n", "[...]" is a header).
std::vector<Section> empty_sections(std::string_view text) {
  std::vector<Section> empty;
  std::optional<std::string> open_prefix;  // the last header's prefix, while no key has followed it
  auto close = [&] {
    if (!open_prefix) return;
    const std::string& p = *open_prefix;
    const size_t dot = p.find('.');
    // PO's prefix always ends in '.', so both halves are well defined.
    empty.push_back(
        Section{p.substr(0, dot), dot + 1 < p.size() ? p.substr(dot + 1, p.size() - dot - 2) : "", {}});
    open_prefix.reset();
  };
  while (!text.empty()) {
    const size_t eol = text.find('\n');
    std::string_view line = text.substr(0, eol);
    text.remove_prefix(eol == std::string_view::npos ? text.size() : eol + 1);
    line = line.substr(0, line.find('#'));
    const size_t first = line.find_first_not_of(" \t\r\n");
    if (first == std::string_view::npos) continue;
    line = line.substr(first, line.find_last_not_of(" \t\r\n") - first + 1);
    if (line.front() == '[' && line.back() == ']') {
      close();
      std::string prefix(line.substr(1, line.size() - 2));
      if (prefix.empty() || prefix.back() != '.') prefix += '.';
      open_prefix = std::move(prefix);
    } else {
      open_prefix.reset();
    }
  }
  close();
  return empty;
}

bool same(const OriginEntry& a, const OriginEntry& b) { return a.name == b.name && a.device == b.device; }
bool same(const SnapshotEntry& a, const SnapshotEntry& b) {
  return a.name == b.name && a.origin == b.origin && a.cow == b.cow && a.cow_is_default == b.cow_is_default &&
         a.persistent == b.persistent && a.writable == b.writable && a.chunk_size == b.chunk_size &&
         a.merging == b.merging;
}
bool same(const MirrorEntry& a, const MirrorEntry& b) {
  return a.name == b.name && a.legs == b.legs && a.region_size == b.region_size && a.log == b.log &&
         a.log_device == b.log_device && a.log_is_default == b.log_is_default &&
         a.throttle_percent == b.throttle_percent &&
         a.throttle_bytes_per_second == b.throttle_bytes_per_second;
}
template <class T>
bool same(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (!same(a[i], b[i])) return false;
  return true;
}

// PO trims whitespace around values and cuts them at '#', and a line ends at '\n': such a value would not
// come back as written.
std::optional<Error> check_value(const std::string& path, std::string_view kind, const std::string& name,
                                 std::string_view key, const std::string& value) {
  const std::string where = path + ": [" + std::string(kind) + "." + printable(name) + "]: ";
  auto space = [](char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
  };
  if (value.find('#') != std::string::npos || value.find('\n') != std::string::npos)
    return Error::invalid(where + "value of '" + std::string(key) + "' contains '#' or a newline, which " +
                          "the volume table cannot hold: '" + printable(value) + "'");
  if (!value.empty() && (space(value.front()) || space(value.back())))
    return Error::invalid(where + "value of '" + std::string(key) +
                          "' has leading or trailing whitespace, which the volume table cannot hold: '" +
                          printable(value) + "'");
  return std::nullopt;
}

// Refuses a table that would not load back as it is, so the daemon never writes a file it cannot mount.
std::optional<Error> check_storable(const std::string& path, const VolumeTable& table) {
  for (const OriginEntry& o : table.origins)
    if (auto e = check_value(path, "origin", o.name, "device", o.device)) return e;
  for (const SnapshotEntry& s : table.snapshots) {
    if (auto e = check_value(path, "snapshot", s.name, "origin", s.origin)) return e;
    if (auto e = check_value(path, "snapshot", s.name, "cow", s.cow)) return e;
  }
  for (const MirrorEntry& m : table.mirrors) {
    for (const std::string& leg : m.legs)
      if (auto e = check_value(path, "mirror", m.name, "leg", leg)) return e;
    if (auto e = check_value(path, "mirror", m.name, "log_device", m.log_device)) return e;
    if (m.log == "core" && !m.log_device.empty())
      return Error::invalid(path + ": [mirror." + printable(m.name) + "]: log_device given with log = core");
  }
  auto back = parse_volume_table(format_volume_table(table), path);
  if (!back) return back.error();
  if (!same(back->origins, table.origins) || !same(back->snapshots, table.snapshots) ||
      !same(back->mirrors, table.mirrors))
    return Error::invalid(path + ": the volume table would not read back as written");
  return std::nullopt;
}

Status write_all(int fd, std::string_view data, const std::string& what) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error::from_errno(errno, what);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return {};
}

// Removes the temporary file unless the rename consumed it.
class TmpFileGuard {
 public:
  explicit TmpFileGuard(std::string path) : path_(std::move(path)) {}
  ~TmpFileGuard() {
    if (armed_) ::unlink(path_.c_str());
  }
  TmpFileGuard(const TmpFileGuard&) = delete;
  TmpFileGuard& operator=(const TmpFileGuard&) = delete;
  void dismiss() { armed_ = false; }

 private:
  std::string path_;
  bool armed_ = true;
};

}  // namespace

bool valid_target_name(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameLength || name.front() == '.') return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                    c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::string format_volume_table(const VolumeTable& table) {
  std::string out(kHeader);
  for (const OriginEntry& o : table.origins) {
    out += "\n";
    out += section_header("origin", o.name);
    put(out, "device", o.device);
  }
  for (const SnapshotEntry& s : table.snapshots) {
    out += "\n";
    out += section_header("snapshot", s.name);
    put(out, "origin", s.origin);
    put(out, "cow", s.cow);
    put(out, "cow_is_default", bool_text(s.cow_is_default));
    put(out, "persistent", bool_text(s.persistent));
    put(out, "writable", bool_text(s.writable));
    put(out, "chunk_size", std::to_string(s.chunk_size.value()));
    put(out, "merging", bool_text(s.merging));
  }
  for (const MirrorEntry& m : table.mirrors) {
    out += "\n";
    out += section_header("mirror", m.name);
    for (const std::string& leg : m.legs) put(out, "leg", leg);
    put(out, "region_size", std::to_string(m.region_size.value()));
    put(out, "log", m.log);
    if (m.log != "core") put(out, "log_device", m.log_device);
    put(out, "log_is_default", bool_text(m.log_is_default));
    if (m.throttle_percent != 100) put(out, "throttle_percent", std::to_string(m.throttle_percent));
    if (m.throttle_bytes_per_second != 0)
      put(out, "throttle_rate", std::to_string(m.throttle_bytes_per_second));
  }
  return out;
}

Result<VolumeTable> parse_volume_table(std::string_view text, const std::string& source) {
  auto sections = read_sections(text, source);
  if (!sections) return sections.error();
  // Every kind has a required key, so an empty section always ends up refused below.
  for (Section& s : empty_sections(text)) sections->push_back(std::move(s));
  VolumeTable table;
  std::set<std::string> names;
  for (const Section& s : sections.value()) {
    SectionParser p(s, source);
    if (s.kind != "origin" && s.kind != "snapshot" && s.kind != "mirror")
      return p.fault("unknown kind '" + printable(s.kind) + "' (origin, snapshot or mirror)");
    if (!valid_target_name(s.name))
      return p.fault("invalid name '" + printable(s.name) +
                     "' (1-64 of A-Z a-z 0-9 . _ -, not starting with '.')");
    if (!names.insert(s.name).second) return p.fault("duplicate name '" + s.name + "'");
    if (s.kind == "origin") {
      auto e = parse_origin(p, s);
      if (!e) return e.error();
      table.origins.push_back(std::move(e).value());
    } else if (s.kind == "snapshot") {
      auto e = parse_snapshot(p, s);
      if (!e) return e.error();
      table.snapshots.push_back(std::move(e).value());
    } else {
      auto e = parse_mirror(p, s);
      if (!e) return e.error();
      table.mirrors.push_back(std::move(e).value());
    }
  }
  for (const SnapshotEntry& s : table.snapshots) {
    bool found = false;
    for (const OriginEntry& o : table.origins) found = found || o.name == s.origin;
    if (!found)
      return Error::invalid(source + ": [snapshot." + s.name + "]: origin '" + printable(s.origin) +
                            "' is not an [origin.X] section");
  }
  return table;
}

Result<VolumeTable> load_volume_table(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == ENOENT) return VolumeTable{};
    return Error::from_errno(errno, "open " + path);
  }
  std::string text;
  char buf[16384];
  for (;;) {
    const ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error::from_errno(errno, "read " + path);
    }
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
  }
  return parse_volume_table(text, path);
}

Status save_volume_table(const std::string& path, const VolumeTable& table) {
  if (auto e = check_storable(path, table)) return *e;
  const std::string text = format_volume_table(table);
  const std::string tmp = path + ".tmp";

  UniqueFd fd(::open(tmp.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600));
  if (!fd.valid()) return Error::from_errno(errno, "open " + tmp);
  TmpFileGuard guard(tmp);
  if (auto s = write_all(fd.get(), text, "write " + tmp); !s) return s;
  if (::fsync(fd.get()) != 0) return Error::from_errno(errno, "fsync " + tmp);
  if (::close(fd.release()) != 0) return Error::from_errno(errno, "close " + tmp);
  if (::rename(tmp.c_str(), path.c_str()) != 0)
    return Error::from_errno(errno, "rename " + tmp + " to " + path);
  guard.dismiss();

  // The rename is durable only once the directory entry is on disk.
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  UniqueFd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir_fd.valid()) return Error::from_errno(errno, "open " + dir);
  if (::fsync(dir_fd.get()) != 0) return Error::from_errno(errno, "fsync " + dir);
  return {};
}

}  // namespace kcopyfs::daemon
