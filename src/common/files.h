// Files: the few durable-file steps that checkpoints and the offline store share.
//
// Crash safety rests on one pattern: write a temporary file, fsync it, rename it into place, fsync the
// directory. Then a crash leaves the old file or the complete new one, never a partial one under its name.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>

#include "common/status.h"

namespace freshet {

// Writes the pieces to `path` (created or truncated) and fsyncs it. Errors name `what` ("checkpoint
// file") and the path.
Status WriteFileDurably(const std::string& path, std::initializer_list<std::string_view> pieces,
                        const char* what = "file");

// Makes the directory's entries (created, renamed, removed files) durable.
Status SyncDirectory(const std::string& directory);

// Renames `from` to `to` without replacing an existing `to` (renameat2 RENAME_NOREPLACE, with link+unlink
// where the file system lacks it). Fails with kAlreadyExists-like IoError naming `to` when it exists.
Status RenameNoReplace(const std::string& from, const std::string& to, bool* existed);

// Reads a whole file; on failure the message is the reason alone ("cannot be opened: No such file ...").
Result<std::string> ReadWholeFile(const std::string& path);

}  // namespace freshet
