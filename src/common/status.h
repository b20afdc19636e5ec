// Status and Result<T>: how errors travel across Freshet's I/O and user-input boundaries.
//
// A user error (bad spec, malformed event, missing file) is a Status with a message that says what,
// where and how to fix it. Internal invariants are FRESHET_CHECK assertions instead.
//
//   Result<Spec> spec = LoadSpec(path);
//   if (!spec.ok()) { std::cerr << spec.status().message() << "\n"; return 2; }
//
// Inside functions that return Status or Result, propagate with the macros:
//   FRESHET_RETURN_IF_ERROR(WriteHeader(out));
//   FRESHET_ASSIGN_OR_RETURN(auto rows, ReadRows(path));
#pragma once

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace freshet {

enum class StatusCode { kOk = 0, kInvalidArgument, kNotFound, kIoError, kInternal };

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }
  static Status Invalid(std::string message) { return Status(StatusCode::kInvalidArgument, std::move(message)); }
  static Status NotFound(std::string message) { return Status(StatusCode::kNotFound, std::move(message)); }
  static Status IoError(std::string message) { return Status(StatusCode::kIoError, std::move(message)); }
  static Status Internal(std::string message) { return Status(StatusCode::kInternal, std::move(message)); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

// Either a value or the Status that explains why there is none.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : data_(std::move(value)) {}  // NOLINT: implicit by design, like absl::StatusOr.
  Result(Status status) : data_(std::move(status)) {}  // NOLINT

  bool ok() const { return std::holds_alternative<T>(data_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(data_);
  }
  T& value() & { return std::get<T>(data_); }
  const T& value() const& { return std::get<T>(data_); }
  T&& value() && { return std::get<T>(std::move(data_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<T, Status> data_;
};

}  // namespace freshet

#define FRESHET_CONCAT_INNER(a, b) a##b
#define FRESHET_CONCAT(a, b) FRESHET_CONCAT_INNER(a, b)

#define FRESHET_RETURN_IF_ERROR(expr)            \
  do {                                           \
    ::freshet::Status _freshet_status = (expr);  \
    if (!_freshet_status.ok()) return _freshet_status; \
  } while (0)

#define FRESHET_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                  \
  if (!tmp.ok()) return tmp.status();                 \
  lhs = std::move(tmp).value()

#define FRESHET_ASSIGN_OR_RETURN(lhs, expr) \
  FRESHET_ASSIGN_OR_RETURN_IMPL(FRESHET_CONCAT(_freshet_result_, __LINE__), lhs, expr)

// Internal invariant: a failure is a bug in Freshet, never a user error.
#define FRESHET_CHECK(cond)                                                              \
  do {                                                                                   \
    if (!(cond)) {                                                                       \
      std::fprintf(stderr, "freshet: internal error: %s:%d: check failed: %s\n", __FILE__, \
                   __LINE__, #cond);                                                     \
      std::abort();                                                                      \
    }                                                                                    \
  } while (0)
