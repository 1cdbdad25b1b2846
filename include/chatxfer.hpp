// chatxfer: file uploads and downloads for the llfcchat Qt client, C++ API (cxx bridge).
//
// Include this header; its include path needs include/ of the crate and
// <cargo target dir>/cxxbridge (cmake/chatxfer.cmake and qmake/chatxfer.pri
// set both; the installed CMake package has them under include/).
//
// Supported: C++11 or newer for this header and chatxfer_sink.h (the bridge
// inside the library is built as C++17 by cargo; the app's standard need not
// match). Checked in CI with GCC 12, -std=c++11 -Wall -Wextra -Werror
// -pedantic (cpp-example/headers_cxx11.cpp). Meant for, not built here: Clang
// (Linux, Apple), MinGW-w64 GCC, and MSVC 2019 or newer (its oldest mode,
// /std:c++14, is fine), where the bridge must use the app's runtime, /MD or
// /MDd (the CMake and qmake integrations pass it; README "Use from the Qt
// client").
//
//   auto client = chatxfer::NewClient(std::make_unique<MySink>());
//   client->Connect("127.0.0.1", 8090);
//   chatxfer::UploadSpec up{};        // fields: see UploadSpec below
//   up.path = path; up.name = name; up.uid = uid; up.sender = uid;
//   up.receiver = peer; up.message_id = msg_id; up.hold = true;
//   client->AddTransFile(up);         // held: nothing is sent yet
//   // or positionally, as the Qt client calls it (builds the spec):
//   chatxfer::AddTransFile(*client, path, name, uid, sender, receiver, msg_id, md5, prio);
//   ...ChatServer confirmed the message...
//   client->BatchSend(name);          // starts (or resumes) the upload
//   // or registered at send time with message_id 0, started in the 1036
//   // handler with the id: chatxfer::BatchSend(*client, name, msg_id);
//   client->Pause(name); client->Resume(name); client->Cancel(name);
//   chatxfer::SendFile(*client, ...same arguments...);  // hold = false
//   chatxfer::DownloadSpec dl{};      // or chatxfer::AddDownloadFile(*client, name,
//   dl.name = name; ...               //    message_id, uid, token, dest_dir, md5, prio)
//   client->AddDownloadFile(dl);
//   client->StartDownload(name);      // held until here; then OnProgress...,
//                                     // OnSaved(name, path), OnCompleted
//   chatxfer::AddAvatarDownload(*client, name, avatar_name, uid, token, dest_dir, client_path,
//                               "self_icon");  // OnAvatarSaved(name, path, client_path, req_type)
//   chatxfer::FileInfo info; client->GetStatus(name, info);
//   for (auto& e : client->PollEvents()) ...  // only when created without a sink
//   client->Shutdown();               // or let the rust::Box go
//   chatxfer::ShutdownLibrary();      // optional, before exit: joins the library's threads
//
// Objects:
//   Client         the library connects, reconnects and resumes by itself on
//                  its own threads. All methods may be called from any thread.
//                  (The C API's chatxfer_client is the same object.)
//   TransferEngine the same engine without IO, for a host that keeps its own
//                  socket (today's FileTcpMgr): write PollTransmit()'s bytes,
//                  pass each reply to OnUploadRsp(id, body) (or raw bytes to
//                  HandleBytes), call HandleTimeout() after NextTimeoutMs(),
//                  Connected()/ConnectionLost() on socket changes, and drain
//                  PollEvents() after each call. One thread owns it. Its
//                  downloads (AddDownloadFile/StartDownload) write the file
//                  on that thread, inside HandleBytes/OnUploadRsp.
//                  (The C API's chatxfer_engine is the same object.)
//
// Threading contract: events of a Client are delivered to the EventSink
// (chatxfer_sink.h) on the library thread "chatxfer-events", one at a time
// and in order. A Qt app forwards each call to its GUI thread with a queued
// connection (QMetaObject::invokeMethod(..., Qt::QueuedConnection) or a
// signal connected with Qt::QueuedConnection) before touching widgets.
// Without a sink (nullptr), events queue until PollEvents() is called from
// the app's own thread.
//
// Errors: calls return chatxfer::Status (same numbers as the C API's
// chatxfer_result, whose header explains each value; StatusName() and
// StatusDescription() give them at run time); LastError() has the text of
// the last failure on the calling thread. Only NewClient/NewTransferEngine
// can throw (rust::Error), and only on an internal error. No Rust panic
// crosses into C++, and exceptions thrown by the sink are caught by the
// library.
//
// Failures: EventSink::OnFailed(name, code, message) and Event::code carry
// either the server's error code or one of the library's own codes,
// chatxfer::Failure (the C API's chatxfer_failure, same numbers):
//   2001 Failure::Source       the source file could not be read, or
//                              changed while uploading;
//   2002 Failure::Unconfirmed  every chunk was sent but the server never
//                              confirmed the last one; against an appending
//                              server a resend could corrupt the file, so
//                              the transfer stops;
//   2003 Failure::BadReply     the server's reply was unusable: wrong seq,
//                              bad data, a hostile name, no data, no answer
//                              to 1045, a downloaded file whose md5 does
//                              not match, or an upload whose stored size
//                              differs from the file's at the end;
//   2004 Failure::Local        the local side failed: the downloaded file
//                              could not be written or renamed;
//   2005 Failure::GaveUp       a give-up budget ran out: no progress for too
//                              long, or too many bytes re-sent for one
//                              upload; the message names the cause and the
//                              last server error;
//   2006 Failure::Internal     the library failed inside (a bug, e.g. a panic
//                              in its connection driver): the client stopped,
//                              every unfinished transfer fails with this code,
//                              OnConnection(false, reason, -1) follows, and
//                              later calls return Status::Broken.
//
// Downloads (Client only): AddDownloadFile registers the download held
// (Paused, nothing asked of the server); StartDownload (the same as
// Resume/BatchSend) starts it. GetStatus says 0 of 0 bytes until the server
// tells the size. Pause/Resume/Cancel/GetStatus work by name as for uploads.
//
// Hashing: Client::AddTransFile with an empty md5 returns at once; the md5
// is computed on a library thread (GetStatus says md5 "" meanwhile) and the
// upload starts when it is known. TransferEngine::AddTransFile computes it
// in the call (one thread owns that engine).
#pragma once

#include "chatxfer_sink.h"
#include "chatxfer/src/ffi/bridge.rs.h"

#include <cstdint>
#include <string>

namespace chatxfer {

// Positional forms in the Qt client's argument order; each only builds the
// spec (one definition of the arguments: UploadSpec / DownloadSpec).
// `Target` is Client or TransferEngine.

// The spec both positional upload forms build.
inline UploadSpec MakeUploadSpec(const std::string& path, const std::string& name,
                                 std::int64_t uid, std::int64_t sender, std::int64_t receiver,
                                 std::int64_t message_id, const std::string& md5,
                                 std::uint8_t priority, bool hold) {
  UploadSpec spec{};
  spec.path = rust::String(path);
  spec.name = rust::String(name);
  spec.uid = uid;
  spec.sender = sender;
  spec.receiver = receiver;
  spec.message_id = message_id;
  spec.md5 = rust::String(md5);
  spec.priority = priority;
  spec.hold = hold;
  return spec;
}

// Registers an upload held until BatchSend.
template <class Target>
inline Status AddTransFile(Target& target, const std::string& path, const std::string& name,
                           std::int64_t uid, std::int64_t sender, std::int64_t receiver,
                           std::int64_t message_id, const std::string& md5,
                           std::uint8_t priority) {
  return target.AddTransFile(MakeUploadSpec(path, name, uid, sender, receiver, message_id, md5,
                                            priority, /*hold=*/true));
}

// AddTransFile + BatchSend: registers the upload and starts it at once.
template <class Target>
inline Status SendFile(Target& target, const std::string& path, const std::string& name,
                       std::int64_t uid, std::int64_t sender, std::int64_t receiver,
                       std::int64_t message_id, const std::string& md5, std::uint8_t priority) {
  return target.AddTransFile(MakeUploadSpec(path, name, uid, sender, receiver, message_id, md5,
                                            priority, /*hold=*/false));
}

// The 1036 handler of an upload registered at send time (held, message id
// 0): gives it the ChatServer's message id and starts it.
template <class Target>
inline Status BatchSend(Target& target, const std::string& name, std::int64_t message_id) {
  Status s = target.SetMessageId(name, message_id);
  return s == Status::Ok ? target.BatchSend(name) : s;
}

// Registers the download of chat message `message_id`'s file into
// `dest_dir`, held until StartDownload.
template <class Target>
inline Status AddDownloadFile(Target& client, const std::string& name, std::int64_t message_id,
                              std::int64_t uid, const std::string& token,
                              const std::string& dest_dir, const std::string& md5,
                              std::uint8_t priority) {
  DownloadSpec spec{};
  spec.name = rust::String(name);
  spec.message_id = message_id;
  spec.uid = uid;
  spec.token = rust::String(token);
  spec.dest_dir = rust::String(dest_dir);
  spec.md5 = rust::String(md5);
  spec.priority = priority;
  return client.AddDownloadFile(spec);
}

// Registers the download of user `uid`'s avatar `avatar_name` (1033) into
// `dest_dir`, held until StartDownload. `req_type` is the client's own
// routing word ("self_icon" / "other_icon"; "" sends "1"); it comes back with
// `client_path` in EventSink::OnAvatarSaved.
template <class Target>
inline Status AddAvatarDownload(Target& client, const std::string& name,
                                const std::string& avatar_name, std::int64_t uid,
                                const std::string& token, const std::string& dest_dir,
                                const std::string& client_path, const std::string& req_type) {
  DownloadSpec spec{};
  spec.name = rust::String(name);
  spec.uid = uid;
  spec.token = rust::String(token);
  spec.dest_dir = rust::String(dest_dir);
  spec.avatar_name = rust::String(avatar_name);
  spec.avatar_client_path = rust::String(client_path);
  spec.avatar_req_type = rust::String(req_type);
  return client.AddDownloadFile(spec);
}

// The same without a routing word (req_type "1").
template <class Target>
inline Status AddAvatarDownload(Target& client, const std::string& name,
                                const std::string& avatar_name, std::int64_t uid,
                                const std::string& token, const std::string& dest_dir,
                                const std::string& client_path) {
  return AddAvatarDownload(client, name, avatar_name, uid, token, dest_dir, client_path,
                           std::string());
}

}  // namespace chatxfer
