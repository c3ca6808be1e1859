// Errors as values at module edges.
//
// An Error is an errno-style std::error_code plus one human sentence that names what failed and the path it
// failed on ("open /dev/loop3: Device or resource busy (held by another process)"). Result<T> holds a T or an
// Error; Status is Result<void>. The CLI prints Error::message() as its one line on stderr.
#pragma once

#include <cerrno>
#include <string>
#include <system_error>
#include <utility>
#include <variant>

namespace kcopyfs {

class Error {
 public:
  Error(std::error_code code, std::string message) : code_(code), message_(std::move(message)) {}
  // errno_value is a positive errno; the message is "what: strerror(errno_value)".
  static Error from_errno(int errno_value, const std::string& what) {
    std::error_code ec(errno_value, std::generic_category());
    return Error(ec, what + ": " + ec.message());
  }
  static Error invalid(const std::string& message) {
    return Error(std::make_error_code(std::errc::invalid_argument), message);
  }

  const std::error_code& code() const { return code_; }
  const std::string& message() const { return message_; }
  int errno_value() const { return code_.value(); }

 private:
  std::error_code code_;
  std::string message_;
};

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}      // NOLINT: implicit by design, as std::expected
  Result(Error error) : v_(std::move(error)) {}  // NOLINT

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() & { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  const T& value() const& { return std::get<0>(v_); }
  T& operator*() & { return value(); }
  T* operator->() { return &value(); }
  const Error& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)), ok_(false) {}  // NOLINT

  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error& error() const { return error_; }

 private:
  Error error_{std::error_code(), std::string()};
  bool ok_ = true;
};

using Status = Result<void>;

}  // namespace kcopyfs
