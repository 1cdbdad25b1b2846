// chatxfer for Qt apps: a QObject that owns a chatxfer::Client and turns
// its EventSink callbacks into Qt signals on the object's own thread.
//
// Build: this header has a Q_OBJECT, so moc must see it, and
// chatxfer_qt.cpp (next to it) must be compiled into the app:
//   qmake:  include(path/to/chatxfer/qmake/chatxfer_qt.pri)   (instead of chatxfer.pri)
//   CMake:  target_link_libraries(app PRIVATE chatxfer::qt)    (in-tree or the
//           installed package; the app needs AUTOMOC ON, as Qt projects have)
// Supported: Qt 5.5 or newer (Q_ENUM) and Qt 6, C++11 or newer (checked
// with Qt 5 and -std=c++11 -Wall -Wextra -Werror -pedantic,
// cpp-example/headers_qt_cxx11.cpp); compilers as in chatxfer.hpp.
//
//   chatxfer::ClientOptions opt = chatxfer::DefaultOptions();
//   opt.token = token.toStdString();
//   auto* xfer = new chatxfer::QtTransfers(opt, this);
//   connect(xfer, &chatxfer::QtTransfers::progress, this, &ChatPage::onProgress);
//   connect(xfer, &chatxfer::QtTransfers::failed, this, &ChatPage::onFailed);
//   xfer->connectToServer(host, port);
//   xfer->addTransFile(path, name, uid, uid, peer, messageId);   // held
//   xfer->batchSend(name);                                       // after 1036
//   if (!xfer->retry(name)) qWarning() << xfer->errorString();
//
// Threading: the library calls its sink on its own thread
// ("chatxfer-events"); this object converts each call to Qt types there
// and posts it to itself (QCoreApplication::postEvent), so every signal is
// emitted on the thread this object lives in (its thread(), normally the
// GUI thread), one at a time and in the library's order. Receivers on that
// thread are called directly; connect to them as usual. Call the methods
// on that thread too: they are thin and return at once (the library works
// on its own threads), and errorString()/lastStatus() describe the last
// call made on this object.
//
// Lifetime: the destructor first cuts the sink off this object (under a
// mutex the sink holds while posting, so a callback running on the library
// thread either has posted already or posts nothing), then closes the
// client: Client::Close, like Shutdown, returns only once no sink method
// runs and none will run again (src/ffi/core.rs; chatxfer.hpp). Events
// posted but not yet delivered are dropped with the object (Qt removes an
// object's posted events when it is destroyed). So the library never calls
// into a destroyed QtTransfers, and no signal is emitted after its
// destructor started. Call shutdown() before (e.g. on
// QCoreApplication::aboutToQuit) to drain the chunks in flight so the
// journals of unfinished uploads are exact; the destructor itself closes at
// once, as destroying a Client does.
#pragma once

#include <QList>
#include <QObject>
#include <QString>

#include <memory>

#include "chatxfer.hpp"

QT_BEGIN_NAMESPACE
class QEvent;
QT_END_NAMESPACE

namespace chatxfer {

class QtTransfers : public QObject {
  Q_OBJECT

 public:
  // chatxfer::State, with the same numbers, as a Qt enum (usable in queued
  // connections, QVariant and qDebug).
  enum State { Queued = 0, Sending = 1, Paused = 2, Completed = 3, Failed = 4, Cancelled = 5 };
  Q_ENUM(State)

  // A snapshot of one transfer (transferInfo()).
  struct TransferInfo {
    QString name;
    State state;
    qint64 done;   // acknowledged (upload) or received (download) bytes
    qint64 total;  // 0 for a download until the server told its size
    QString md5;   // "" while an upload's md5 is being computed
  };

  // A transfer an earlier process left unfinished (resumableTransfers()).
  struct Resumable {
    QString name;
    QString path;  // upload: the source file; download: the destination directory
    qint64 done;
    qint64 total;
    bool download;
  };

  // A client with the library's defaults (DefaultOptions()).
  explicit QtTransfers(QObject* parent = nullptr);
  // A client with `options` (start from chatxfer::DefaultOptions(); bad
  // settings make connectToServer fail with InvalidArgument). Throws
  // rust::Error only on an internal error of the library.
  explicit QtTransfers(const ClientOptions& options, QObject* parent = nullptr);
  ~QtTransfers() override;

  // The client itself, for calls this class does not wrap (e.g.
  // AddTransFile with a full UploadSpec: avatars, tokens).
  Client& client();

  // The outcome of the last call on this object, and its text
  // ("WRONG_STATE: ..."; empty after a call that succeeded).
  Status lastStatus() const;
  QString errorString() const;

  // Where transfer `name` stands; false (see errorString()) if unknown.
  bool transferInfo(const QString& name, TransferInfo* out);
  // With ClientOptions::state_dir: what an earlier process left unfinished
  // (known once connected); resumeOffered or discardOffered each.
  QList<Resumable> resumableTransfers() const;

 public Q_SLOTS:
  // Each returns false on refusal (lastStatus()/errorString() say why).
  bool connectToServer(const QString& host, quint16 port);
  // Logout or kick: the connection goes down and stays down, the transfers
  // stay registered; connectToServer again (any server) continues them.
  bool disconnectFromServer();

  // Registers an upload held until batchSend (the client's AddTransFile);
  // an empty md5 is computed on a library thread. `messageId` is the
  // ChatServer's 1036 id, or 0 at send time: setMessageId gives it later.
  bool addTransFile(const QString& path, const QString& name, qint64 uid, qint64 sender,
                    qint64 receiver, qint64 messageId, const QString& md5 = QString(),
                    int priority = 0);
  // addTransFile + batchSend.
  bool sendFile(const QString& path, const QString& name, qint64 uid, qint64 sender,
                qint64 receiver, qint64 messageId, const QString& md5 = QString(),
                int priority = 0);
  // Starts a held upload (or continues a paused one).
  bool batchSend(const QString& name);
  // Gives an upload registered with messageId 0 the 1036 reply's id
  // (batchSend refuses it until then).
  bool setMessageId(const QString& name, qint64 messageId);
  // Hashes the file at `path` on a library thread (the md5 the 1035
  // announce needs): md5Progress signals, then md5Ready. After
  // connectToServer (NotConnected before).
  bool computeMd5(const QString& path);

  // Uploads user `uid`'s avatar (1031, stop-and-wait; no message id) with
  // the login `token` (empty: ClientOptions::token); starts at once.
  bool sendAvatar(const QString& path, const QString& name, qint64 uid, const QString& token);

  // Registers the download of chat message `messageId`'s file into the
  // directory `destDir`, held until startDownload.
  bool addDownloadFile(const QString& name, qint64 messageId, qint64 uid, const QString& token,
                       const QString& destDir, const QString& md5 = QString(), int priority = 0);
  // Registers the download of user `uid`'s avatar `avatarName`, held;
  // `clientPath` and `reqType` ("self_icon"/"other_icon", as the client
  // sends) come back with avatarSaved.
  bool addAvatarDownload(const QString& name, const QString& avatarName, qint64 uid,
                         const QString& token, const QString& destDir,
                         const QString& clientPath, const QString& reqType);
  bool startDownload(const QString& name);

  bool pause(const QString& name);
  bool resume(const QString& name);
  // A failed or cancelled transfer starts over under the same name (the
  // failed bubble's click).
  bool retry(const QString& name);
  bool cancel(const QString& name);

  bool resumeOffered(const QString& name);
  bool discardOffered(const QString& name);

  // Drains the chunks in flight (up to `timeoutMs`) so the journals are
  // exact, closes the connection and stops the signals; later calls fail
  // with ShutDown.
  bool shutdown(int timeoutMs = 5000);

 Q_SIGNALS:
  // EventSink::OnProgress: `done` of `total` bytes acknowledged (upload)
  // or received (download), at `bytesPerSecond` (coalesced; the last one,
  // done == total, always comes).
  void progress(const QString& name, qint64 done, qint64 total, double bytesPerSecond);
  // EventSink::OnStateChanged.
  void stateChanged(const QString& name, chatxfer::QtTransfers::State state);
  // EventSink::OnSaved: a download was verified and put in place at `path`
  // (completed follows).
  void saved(const QString& name, const QString& path);
  // EventSink::OnAvatarSaved: an avatar download saved at `path` (after
  // saved, before completed), with the `clientPath` and `reqType` its
  // request carried, to route it as the client's 1034 handler does.
  void avatarSaved(const QString& name, const QString& path, const QString& clientPath,
                   const QString& reqType);
  // EventSink::OnMd5Progress: computeMd5(path) has hashed `hashed` of
  // `total` bytes.
  void md5Progress(const QString& path, qint64 hashed, qint64 total);
  // EventSink::OnMd5Ready: computeMd5(path) ended with `md5` (32 lowercase
  // hex digits), or "" and `error` when the file could not be read.
  void md5Ready(const QString& path, const QString& md5, const QString& error);
  // EventSink::OnCompleted: an upload stored and verified by the server, or
  // a download saved and verified.
  void completed(const QString& name, const QString& md5, qint64 bytes);
  // EventSink::OnFailed: `code` is the server's error code or a
  // chatxfer::Failure (2001..2006, chatxfer.hpp).
  void failed(const QString& name, qint64 code, const QString& message);
  // EventSink::OnConnection: up (`detail` names the server) or down
  // (`detail` says why; the library reconnects in `retryInMs` ms, -1: it
  // will not).
  void connectionChanged(bool up, const QString& detail, qint64 retryInMs);
  // EventSink::OnWarning.
  void warning(const QString& message);

 protected:
  // Delivers the events the sink posted.
  void customEvent(QEvent* event) override;

 private:
  struct Target;
  class Sink;

  bool Check(Status status);

  // Declared before client_: the sink shares it, and it must exist first.
  std::shared_ptr<Target> target_;
  rust::Box<Client> client_;
  Status last_status_;
  QString error_;
};

}  // namespace chatxfer
