// chatxfer: file uploads and downloads for the llfcchat Qt client, C++ API (cxx bridge).
//
// Include this header; its include path needs include/ of the crate and
// <cargo target dir>/cxxbridge (cmake/chatxfer.cmake sets both).
//
//   auto xfer = chatxfer::NewFileTransfer(std::make_unique<MySink>());
//   xfer->Connect("127.0.0.1", 8090);
//   xfer->AddTransFile(path, name, uid, sender, receiver, msg_id, md5, prio);
//   ...ChatServer confirmed the message...
//   xfer->BatchSend(name);            // starts (or resumes) the upload
//   xfer->Pause(name); xfer->Resume(name); xfer->Cancel(name);
//   xfer->SendFile(...same arguments...);   // AddTransFile + BatchSend
//   xfer->AddDownloadFile(name, message_id, uid, token, dest_dir, md5, prio);
//   xfer->StartDownload(name);        // held until here; then OnProgress...,
//                                     // OnSaved(name, path), OnCompleted
//   xfer->AddAvatarDownload(name, avatar_name, uid, token, dest_dir, client_path);
//   chatxfer::FileInfo info; xfer->GetStatus(name, info);
//   for (auto& e : xfer->PollEvents()) ...  // only when created without a sink
//   xfer->Shutdown();                 // or let the rust::Box go
//   chatxfer::ShutdownLibrary();      // optional, before exit: joins the library's threads
//
// Objects:
//   FileTransfer   the library connects, reconnects and resumes by itself on
//                  its own threads. All methods may be called from any thread.
//   TransferEngine the same engine without IO, for a host that keeps its own
//                  socket (today's FileTcpMgr): write PollTransmit()'s bytes,
//                  pass each reply to OnUploadRsp(id, body) (or raw bytes to
//                  HandleBytes), call HandleTimeout() after NextTimeoutMs(),
//                  Connected()/ConnectionLost() on socket changes, and drain
//                  PollEvents() after each call. One thread owns it.
//
// Threading contract: events of a FileTransfer are delivered to the
// EventSink (chatxfer_sink.h) on the library thread "chatxfer-events", one
// at a time and in order. A Qt app forwards each call to its GUI thread with
// a queued connection (QMetaObject::invokeMethod(..., Qt::QueuedConnection)
// or a signal connected with Qt::QueuedConnection) before touching widgets.
// Without a sink (nullptr), events queue until PollEvents() is called from
// the app's own thread.
//
// Errors: calls return chatxfer::Status (same numbers as the C API's
// chatxfer_result); LastError() has the text of the last failure on the
// calling thread. Only NewFileTransfer/NewTransferEngine can throw
// (rust::Error), and only on an internal error. No Rust panic crosses into
// C++, and exceptions thrown by the sink are caught by the library.
//
// Downloads (FileTransfer only): the engine has no held state for downloads,
// so AddDownloadFile/AddAvatarDownload only check and keep the arguments;
// StartDownload (or Resume/BatchSend) registers and starts the download.
// Until then GetStatus says Paused (0 of 0 bytes) and Cancel forgets it.
// Pause/Resume/Cancel/GetStatus then work by name as for uploads.
//
// Blocking: AddTransFile/SendFile with an empty md5 read the whole file to
// compute it; pass the md5 the chat message already carries, or call them
// off the GUI thread for big files.
#pragma once

#include "chatxfer_sink.h"
#include "chatxfer/src/ffi/bridge.rs.h"
