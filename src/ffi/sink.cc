// The C++ half of event delivery: Event -> the matching EventSink method.
// Exceptions stop here: one escaping into Rust would call std::terminate.
#include "chatxfer/src/ffi/bridge.rs.h"

namespace chatxfer {

void deliver(EventSink& sink, const Event& e) {
  try {
    const std::string name(e.name);
    switch (e.kind) {
      case EventKind::Progress:
        sink.OnProgress(name, e.acked, e.total, e.rate);
        break;
      case EventKind::StateChanged:
        sink.OnStateChanged(name, e.state);
        break;
      case EventKind::Completed:
        sink.OnCompleted(name, std::string(e.md5), e.total);
        break;
      case EventKind::Saved:
        sink.OnSaved(name, std::string(e.path));
        // An avatar's request always has a req_type (default "1").
        if (!e.req_type.empty()) {
          sink.OnAvatarSaved(name, std::string(e.path), std::string(e.client_path),
                             std::string(e.req_type));
        }
        break;
      case EventKind::Md5Progress:
        sink.OnMd5Progress(std::string(e.path), e.acked, e.total);
        break;
      case EventKind::Md5Ready:
        sink.OnMd5Ready(std::string(e.path), std::string(e.md5), std::string(e.message));
        break;
      case EventKind::Failed:
        sink.OnFailed(name, e.code, std::string(e.message));
        break;
      case EventKind::Connected:
        sink.OnConnection(true, std::string(e.message), -1);
        break;
      case EventKind::Disconnected:
        sink.OnConnection(false, std::string(e.message), e.retry_in_ms);
        break;
      case EventKind::Warning:
        sink.OnWarning(std::string(e.message));
        break;
        // No default: -Wswitch then names a kind added to the bridge but
        // not delivered here.
    }
  } catch (...) {
    // The app's exception: this event is lost, the transfer goes on.
  }
}

void deliver_log(LogSink& sink, LogLevel level, rust::Str target, rust::Str message) {
  try {
    sink.OnLog(level, std::string(target), std::string(message));
  } catch (...) {
    // The app's exception: this line is lost.
  }
}

}  // namespace chatxfer
