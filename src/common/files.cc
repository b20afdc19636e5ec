#include "common/files.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace freshet {
namespace {

std::string SystemError(const std::string& what, const std::string& path) {
  return what + " '" + path + "': " + std::strerror(errno) + "; check that the disk has space and the folder is writable";
}

}  // namespace

Status WriteFileDurably(const std::string& path, std::initializer_list<std::string_view> pieces, const char* what) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Status::IoError(SystemError(std::string("cannot create ") + what, path));
  for (std::string_view piece : pieces) {
    while (!piece.empty()) {
      const ssize_t n = ::write(fd, piece.data(), piece.size());
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        Status status = Status::IoError(SystemError(std::string("cannot write ") + what, path));
        ::close(fd);
        return status;
      }
      piece.remove_prefix(static_cast<size_t>(n));
    }
  }
  if (::fsync(fd) != 0) {
    Status status = Status::IoError(SystemError(std::string("cannot fsync ") + what, path));
    ::close(fd);
    return status;
  }
  if (::close(fd) != 0) return Status::IoError(SystemError(std::string("cannot close ") + what, path));
  return Status::Ok();
}

Status SyncDirectory(const std::string& directory) {
  const int fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Status::IoError(SystemError("cannot open directory", directory));
  const int rc = ::fsync(fd);
  Status status = rc == 0 ? Status::Ok() : Status::IoError(SystemError("cannot fsync directory", directory));
  ::close(fd);
  return status;
}

Result<std::string> ReadWholeFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::IoError(std::string("cannot be opened: ") + std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    Status status = Status::IoError(std::string("cannot be read: ") + std::strerror(errno));
    ::close(fd);
    return status;
  }
  std::string bytes;
  bytes.resize(static_cast<size_t>(st.st_size));
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::read(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      Status status = Status::IoError(std::string("cannot be read: ") + std::strerror(errno));
      ::close(fd);
      return status;
    }
    if (n == 0) break;  // Shrank while being read: what was read is judged as it is.
    done += static_cast<size_t>(n);
  }
  bytes.resize(done);
  ::close(fd);
  return bytes;
}

Status RenameNoReplace(const std::string& from, const std::string& to, bool* existed) {
  *existed = false;
  if (::syscall(SYS_renameat2, AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) return Status::Ok();
  if (errno == EEXIST) {
    *existed = true;
    return Status::IoError("'" + to + "' already exists");
  }
  if (errno != EINVAL && errno != ENOSYS) return Status::IoError(SystemError("cannot rename '" + from + "' to", to));
  // No RENAME_NOREPLACE here: link() refuses an existing target just the same.
  if (::link(from.c_str(), to.c_str()) != 0) {
    if (errno == EEXIST) {
      *existed = true;
      return Status::IoError("'" + to + "' already exists");
    }
    return Status::IoError(SystemError("cannot link '" + from + "' to", to));
  }
  ::unlink(from.c_str());
  return Status::Ok();
}

}  // namespace freshet
