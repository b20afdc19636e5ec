#include "state/group_checkpoints.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cstring>
#include <filesystem>

#include "common/files.h"
#include "common/time.h"

namespace freshet {
namespace {

constexpr std::string_view kEpochPrefix = "epoch";
constexpr std::string_view kSavedPrefix = "saved";

// The N of a file named "<prefix>-<N>", or nullopt.
std::optional<uint64_t> NumberOf(std::string_view name, std::string_view prefix) {
  if (name.size() <= prefix.size() + 1 || !name.starts_with(prefix) || name[prefix.size()] != '-') return std::nullopt;
  uint64_t n = 0;
  const char* begin = name.data() + prefix.size() + 1;
  const char* end = name.data() + name.size();
  auto [ptr, ec] = std::from_chars(begin, end, n);
  if (ec != std::errc() || ptr != end) return std::nullopt;
  return n;
}

// Creates `path` only if it does not exist; *existed tells a lost race. The content is fsynced before the
// folder, so a claim that exists is complete.
Status CreateExclusive(const std::string& path, std::string_view content, bool* existed) {
  *existed = false;
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    if (errno == EEXIST) {
      *existed = true;
      return Status::Ok();
    }
    return Status::IoError("cannot create '" + path + "': " + std::strerror(errno));
  }
  const bool ok = ::write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size()) && ::fsync(fd) == 0;
  ::close(fd);
  if (!ok) return Status::IoError("cannot write '" + path + "': " + std::strerror(errno));
  return SyncDirectory(std::filesystem::path(path).parent_path().string());
}

}  // namespace

Result<GroupCheckpoints> GroupCheckpoints::Open(const std::string& path, std::string member, int keep) {
  GroupCheckpoints group(path, std::move(member));
  group.keep_ = std::max(1, keep);
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path) / "partitions", ec);
  if (ec) {
    return Status::IoError("cannot create the shared checkpoint folder '" + path + "' (checkpoint.path): " +
                           ec.message() + "; every process of the group must be able to write it");
  }
  // Pruning is ours (AfterWrite): the store keeps everything it writes.
  FRESHET_ASSIGN_OR_RETURN(CheckpointStore store,
                           CheckpointStore::Open((std::filesystem::path(path) / "members" / group.member_).string(),
                                                 INT_MAX));
  group.store_ = std::make_unique<CheckpointStore>(std::move(store));
  return group;
}

std::string GroupCheckpoints::MemberName() {
  char host[256] = "host";
  ::gethostname(host, sizeof(host) - 1);
  return std::string(host) + "-" + std::to_string(::getpid()) + "-" + std::to_string(WallClockMs());
}

std::string GroupCheckpoints::PartitionDir(int32_t partition) const {
  return (std::filesystem::path(path_) / "partitions" / std::to_string(partition)).string();
}

uint64_t GroupCheckpoints::Highest(int32_t partition, std::string_view prefix) const {
  uint64_t highest = 0;
  std::error_code ec;
  for (std::filesystem::directory_iterator it(PartitionDir(partition), ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    if (std::optional<uint64_t> n = NumberOf(it->path().filename().string(), prefix)) highest = std::max(highest, *n);
  }
  return highest;
}

Result<uint64_t> GroupCheckpoints::Claim(int32_t partition) {
  const std::string dir = PartitionDir(partition);
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Status::IoError("cannot create '" + dir + "': " + ec.message());
  for (;;) {
    const uint64_t epoch = Highest(partition, kEpochPrefix) + 1;
    bool existed = false;
    FRESHET_RETURN_IF_ERROR(
        CreateExclusive(dir + "/" + std::string(kEpochPrefix) + "-" + std::to_string(epoch), member_ + "\n", &existed));
    if (!existed) return epoch;
  }
}

bool GroupCheckpoints::StillOwns(int32_t partition, uint64_t epoch) const {
  return Highest(partition, kEpochPrefix) <= epoch;
}

Result<std::map<int32_t, GroupCheckpoints::Found>> GroupCheckpoints::Newest(const std::vector<int32_t>& partitions,
                                                                            std::vector<std::string>* warnings) const {
  struct Best {
    uint64_t epoch = 0, sequence = 0;
    Found found;
  };
  std::map<int32_t, Best> best;
  std::error_code ec;
  const std::filesystem::path members = std::filesystem::path(path_) / "members";
  for (std::filesystem::directory_iterator m(members, ec); !ec && m != std::filesystem::directory_iterator();
       m.increment(ec)) {
    std::error_code files_ec;
    for (std::filesystem::directory_iterator f(m->path(), files_ec);
         !files_ec && f != std::filesystem::directory_iterator(); f.increment(files_ec)) {
      const std::string name = f->path().filename().string();
      if (!name.starts_with("checkpoint-") || !name.ends_with(".ckpt")) continue;  // Temporary files among them.
      Result<std::string> bytes = ReadWholeFile(f->path().string());
      if (!bytes.ok()) continue;  // Pruned by its member meanwhile: a newer one holds what it held.
      Result<Checkpoint> decoded = DecodeCheckpoint(std::move(*bytes));
      if (!decoded.ok()) {
        warnings->push_back("skipped damaged checkpoint '" + f->path().string() + "': " + decoded.status().message());
        continue;
      }
      std::optional<std::map<int32_t, uint64_t>> epochs;
      for (const auto& [key, value] : decoded->positions) {
        if (key == "epochs") epochs = DecodeEpochs(value);
      }
      if (!epochs) continue;
      auto shared = std::make_shared<const Checkpoint>(std::move(*decoded));
      for (int32_t p : partitions) {
        auto e = epochs->find(p);
        if (e == epochs->end()) continue;
        auto [it, fresh] = best.try_emplace(p);
        if (fresh || e->second > it->second.epoch ||
            (e->second == it->second.epoch && shared->sequence > it->second.sequence)) {
          it->second = Best{e->second, shared->sequence, Found{m->path().filename().string(), shared}};
        }
      }
    }
  }
  if (ec) return Status::IoError("cannot list '" + members.string() + "': " + ec.message());
  std::map<int32_t, Found> out;
  for (auto& [p, b] : best) out.emplace(p, std::move(b.found));
  return out;
}

Status GroupCheckpoints::AfterWrite(uint64_t sequence, const std::map<int32_t, uint64_t>& epochs) {
  for (const auto& [p, epoch] : epochs) {
    const std::string saved = PartitionDir(p) + "/" + std::string(kSavedPrefix) + "-" + std::to_string(epoch);
    if (written_.empty() || !std::filesystem::exists(saved)) {
      bool existed = false;
      FRESHET_RETURN_IF_ERROR(CreateExclusive(saved, member_ + "\n", &existed));
    }
  }
  written_[sequence] = epochs;
  // Delete what no partition needs: beyond the newest keep_, a file whose every partition this member has saved
  // again under the same epoch, or a later owner has saved.
  const std::map<int32_t, uint64_t>& newest = written_.rbegin()->second;
  std::vector<uint64_t> done;
  size_t kept = 0;
  for (auto it = written_.rbegin(); it != written_.rend(); ++it) {
    if (kept++ < static_cast<size_t>(keep_)) continue;
    bool needed = false;
    for (const auto& [p, epoch] : it->second) {
      auto n = newest.find(p);
      const bool again = n != newest.end() && n->second == epoch;
      if (!again && Highest(p, kSavedPrefix) <= epoch) needed = true;
    }
    if (!needed) done.push_back(it->first);
  }
  for (uint64_t s : done) {
    std::error_code ec;
    std::filesystem::remove(std::filesystem::path(store_->directory()) / CheckpointStore::FileName(s), ec);
    if (!ec) written_.erase(s);
  }
  return Status::Ok();
}

std::string GroupCheckpoints::EncodeEpochs(const std::map<int32_t, uint64_t>& epochs) {
  std::string text;
  for (const auto& [p, e] : epochs) text += (text.empty() ? "" : " ") + std::to_string(p) + "=" + std::to_string(e);
  return text;
}

std::optional<std::map<int32_t, uint64_t>> GroupCheckpoints::DecodeEpochs(std::string_view text) {
  std::map<int32_t, uint64_t> epochs;
  while (!text.empty()) {
    const size_t end = std::min(text.find(' '), text.size());
    const std::string_view word = text.substr(0, end);
    text.remove_prefix(std::min(end + 1, text.size()));
    const size_t eq = word.find('=');
    int32_t p = 0;
    uint64_t e = 0;
    if (eq == std::string_view::npos || std::from_chars(word.data(), word.data() + eq, p).ec != std::errc() ||
        std::from_chars(word.data() + eq + 1, word.data() + word.size(), e).ec != std::errc()) {
      return std::nullopt;
    }
    epochs[p] = e;
  }
  return epochs;
}

}  // namespace freshet
