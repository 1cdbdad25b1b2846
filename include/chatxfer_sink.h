// chatxfer: the event interface a C++ app implements.
// Included by the generated bridge header; apps include "chatxfer.hpp".
// C++11 or newer (compilers: see chatxfer.hpp).
#pragma once

#include <cstdint>
#include <string>

#include "rust/cxx.h"

namespace chatxfer {

// Defined by the generated bridge header (src/ffi/bridge.rs).
struct Event;
enum class State : std::uint32_t;
enum class LogLevel : std::uint32_t;

// Receives the events of one Client.
//
// Threading: every method is called on the library thread "chatxfer-events"
// of that client, one call at a time, in order -- never on the thread that
// made the request. A Qt app must not touch widgets here: re-post to the GUI
// thread, e.g. QMetaObject::invokeMethod(obj, [=]{ ... }, Qt::QueuedConnection)
// or emit a signal connected with Qt::QueuedConnection. Keep the methods
// short; a slow sink delays later events of the same client. Never wait
// for the GUI thread here (no Qt::BlockingQueuedConnection): Shutdown, on the
// GUI thread, waits for a running method to return.
//
// Ownership: NewClient takes the sink (std::unique_ptr) and deletes it in
// Client::Shutdown (or when the client is destroyed). After
// Shutdown returns no method is called any more (when Shutdown is called
// from inside a method, the sink is deleted right after that method returns).
//
// Exceptions thrown here are caught and the event is dropped; they never
// reach the library.
class EventSink {
 public:
  virtual ~EventSink() = default;
  // Acknowledged bytes of `total`, at `rate` bytes/s (coalesced; the final
  // one, acked == total, is always delivered).
  virtual void OnProgress(const std::string& name, std::uint64_t acked,
                          std::uint64_t total, double rate) {
    (void)name, (void)acked, (void)total, (void)rate;
  }
  virtual void OnStateChanged(const std::string& name, State state) {
    (void)name, (void)state;
  }
  // A download was verified and renamed into place at `path` (Completed
  // follows for the same name).
  virtual void OnSaved(const std::string& name, const std::string& path) {
    (void)name, (void)path;
  }
  // An avatar download was saved at `path` (after OnSaved, before
  // OnCompleted): `client_path` and `req_type` are what its request carried
  // (AddAvatarDownload), so the app routes the picture as the client's
  // 1034 handler does (its own icon or a friend's).
  virtual void OnAvatarSaved(const std::string& name, const std::string& path,
                             const std::string& client_path, const std::string& req_type) {
    (void)name, (void)path, (void)client_path, (void)req_type;
  }
  // Client::ComputeMd5(path): `hashed` of `total` bytes so far (about one
  // call per percent, and one at the end).
  virtual void OnMd5Progress(const std::string& path, std::uint64_t hashed,
                             std::uint64_t total) {
    (void)path, (void)hashed, (void)total;
  }
  // Client::ComputeMd5(path) ended: `md5` (32 lowercase hex digits), or ""
  // and `error` when the file could not be read.
  virtual void OnMd5Ready(const std::string& path, const std::string& md5,
                          const std::string& error) {
    (void)path, (void)md5, (void)error;
  }
  // Upload: stored and verified by the server. Download: saved and verified.
  virtual void OnCompleted(const std::string& name, const std::string& md5,
                           std::uint64_t bytes) {
    (void)name, (void)md5, (void)bytes;
  }
  // `code`: the server's error code, or one of the library's codes 2001..2006
  // (chatxfer::Failure; chatxfer.hpp explains each).
  virtual void OnFailed(const std::string& name, std::int64_t code,
                        const std::string& message) {
    (void)name, (void)code, (void)message;
  }
  // Connection to the ResourceServer up (true; `detail` names the server)
  // or down (false; `detail` says why). When down, the library reconnects
  // by itself in `retry_in_ms` milliseconds and resumes the transfers;
  // -1 means it will not (the client stopped). Transfers that make no
  // progress for their give-up budget fail meanwhile (Failure::GaveUp).
  virtual void OnConnection(bool up, const std::string& detail, std::int64_t retry_in_ms) {
    (void)up, (void)detail, (void)retry_in_ms;
  }
  // Something worth logging (a stalled server, a protocol violation).
  virtual void OnWarning(const std::string& message) { (void)message; }
};

// Used by the bridge: calls the method of `sink` that matches `event`.
void deliver(EventSink& sink, const Event& event);

// Receives the library's log lines (SetLogSink in chatxfer.hpp; process-wide).
//
// Threading: called from any thread -- the library's, or the app's own
// during a call into the library -- one line at a time (the library holds a
// lock around it). Keep it short: append to a file, or post to the GUI
// thread as for EventSink. A line the sink logs itself through the library
// is dropped; exceptions are caught and the line is lost.
//
// Without a log sink the library prints nothing.
class LogSink {
 public:
  virtual ~LogSink() = default;
  // `level`: Error..Trace; `target`: the library module (e.g.
  // "chatxfer::engine"); `message`: "text key=value ...".
  virtual void OnLog(LogLevel level, const std::string& target, const std::string& message) = 0;
};

// Used by the bridge: calls sink.OnLog.
void deliver_log(LogSink& sink, LogLevel level, rust::Str target, rust::Str message);

}  // namespace chatxfer
