// chatxfer::QtTransfers (chatxfer_qt.h): the sink that posts each library
// callback to the QObject, and the slots that forward to chatxfer::Client.
// Compiled into the app (it needs the app's Qt and moc); C++11.
//
// Kept next to chatxfer_qt.h so that CMake's AUTOMOC, which looks for a
// header of the same name beside each source, runs moc on the header.
#include "chatxfer_qt.h"

#include <QCoreApplication>
#include <QEvent>

#include <functional>
#include <mutex>
#include <string>
#include <utility>

namespace chatxfer {

namespace {

// One library callback, converted to Qt types on the library thread; run
// (emitting the signal) on the object's thread.
class Delivery : public QEvent {
 public:
  explicit Delivery(std::function<void(QtTransfers*)> fire)
      : QEvent(type()), fire_(std::move(fire)) {}
  static QEvent::Type type() {
    static const QEvent::Type registered = static_cast<QEvent::Type>(QEvent::registerEventType());
    return registered;
  }
  void Run(QtTransfers* to) const { fire_(to); }

 private:
  std::function<void(QtTransfers*)> fire_;
};

QString Q(const std::string& s) { return QString::fromStdString(s); }
std::string S(const QString& s) { return s.toStdString(); }

std::uint8_t Priority(int p) { return static_cast<std::uint8_t>(qBound(0, p, 255)); }

}  // namespace

// What the sink posts to: null once the object is being destroyed. The
// mutex is held while posting, so clearing it waits for a post under way.
struct QtTransfers::Target {
  std::mutex mutex;
  QtTransfers* object;
};

// Runs on the library's event thread.
class QtTransfers::Sink : public EventSink {
 public:
  explicit Sink(std::shared_ptr<Target> target) : target_(std::move(target)) {}

  void OnProgress(const std::string& name, std::uint64_t acked, std::uint64_t total,
                  double rate) override {
    const QString n = Q(name);
    const qint64 done = static_cast<qint64>(acked), all = static_cast<qint64>(total);
    Post([=](QtTransfers* t) { Q_EMIT t->progress(n, done, all, rate); });
  }
  void OnStateChanged(const std::string& name, chatxfer::State state) override {
    const QString n = Q(name);
    const QtTransfers::State s = static_cast<QtTransfers::State>(state);
    Post([=](QtTransfers* t) { Q_EMIT t->stateChanged(n, s); });
  }
  void OnSaved(const std::string& name, const std::string& path) override {
    const QString n = Q(name), p = Q(path);
    Post([=](QtTransfers* t) { Q_EMIT t->saved(n, p); });
  }
  void OnAvatarSaved(const std::string& name, const std::string& path,
                     const std::string& client_path, const std::string& req_type) override {
    const QString n = Q(name), p = Q(path), c = Q(client_path), r = Q(req_type);
    Post([=](QtTransfers* t) { Q_EMIT t->avatarSaved(n, p, c, r); });
  }
  void OnMd5Progress(const std::string& path, std::uint64_t hashed,
                     std::uint64_t total) override {
    const QString p = Q(path);
    const qint64 h = static_cast<qint64>(hashed), all = static_cast<qint64>(total);
    Post([=](QtTransfers* t) { Q_EMIT t->md5Progress(p, h, all); });
  }
  void OnMd5Ready(const std::string& path, const std::string& md5,
                  const std::string& error) override {
    const QString p = Q(path), m = Q(md5), e = Q(error);
    Post([=](QtTransfers* t) { Q_EMIT t->md5Ready(p, m, e); });
  }
  void OnCompleted(const std::string& name, const std::string& md5,
                   std::uint64_t bytes) override {
    const QString n = Q(name), m = Q(md5);
    const qint64 b = static_cast<qint64>(bytes);
    Post([=](QtTransfers* t) { Q_EMIT t->completed(n, m, b); });
  }
  void OnFailed(const std::string& name, std::int64_t code, const std::string& message) override {
    const QString n = Q(name), m = Q(message);
    const qint64 c = code;
    Post([=](QtTransfers* t) { Q_EMIT t->failed(n, c, m); });
  }
  void OnConnection(bool up, const std::string& detail, std::int64_t retry_in_ms) override {
    const QString d = Q(detail);
    const qint64 retry = retry_in_ms;
    Post([=](QtTransfers* t) { Q_EMIT t->connectionChanged(up, d, retry); });
  }
  void OnWarning(const std::string& message) override {
    const QString m = Q(message);
    Post([=](QtTransfers* t) { Q_EMIT t->warning(m); });
  }

 private:
  void Post(std::function<void(QtTransfers*)> fire) {
    std::lock_guard<std::mutex> lock(target_->mutex);
    // postEvent takes the event and is thread-safe; the event loop of the
    // object's thread delivers it to customEvent.
    if (target_->object) QCoreApplication::postEvent(target_->object, new Delivery(std::move(fire)));
  }

  std::shared_ptr<Target> target_;
};

QtTransfers::QtTransfers(QObject* parent) : QtTransfers(DefaultOptions(), parent) {}

QtTransfers::QtTransfers(const ClientOptions& options, QObject* parent)
    : QObject(parent),
      target_(std::make_shared<Target>()),
      client_(NewClientWith(std::unique_ptr<EventSink>(new Sink(target_)), options)),
      last_status_(Status::Ok) {
  target_->object = this;
  // For queued connections of stateChanged by string-based connect().
  qRegisterMetaType<QtTransfers::State>("chatxfer::QtTransfers::State");
}

QtTransfers::~QtTransfers() {
  {
    std::lock_guard<std::mutex> lock(target_->mutex);
    target_->object = nullptr;
  }
  // After Close returns no sink method runs (ShutDown if shutdown() ran).
  client_->Close();
}

Client& QtTransfers::client() { return *client_; }

Status QtTransfers::lastStatus() const { return last_status_; }

QString QtTransfers::errorString() const { return error_; }

bool QtTransfers::Check(Status status) {
  last_status_ = status;
  if (status == Status::Ok) {
    error_.clear();
    return true;
  }
  error_ = Q(std::string(StatusName(status))) + QStringLiteral(": ") + Q(std::string(LastError()));
  return false;
}

bool QtTransfers::transferInfo(const QString& name, TransferInfo* out) {
  FileInfo info;
  if (!Check(client_->GetStatus(S(name), info))) return false;
  if (out) {
    out->name = Q(std::string(info.name));
    out->state = static_cast<State>(info.state);
    out->done = static_cast<qint64>(info.acked);
    out->total = static_cast<qint64>(info.total);
    out->md5 = Q(std::string(info.md5));
  }
  return true;
}

QList<QtTransfers::Resumable> QtTransfers::resumableTransfers() const {
  QList<Resumable> list;
  for (const chatxfer::Resumable& r : client_->ListResumable()) {
    Resumable q;
    q.name = Q(std::string(r.name));
    q.path = Q(std::string(r.path));
    q.done = static_cast<qint64>(r.done);
    q.total = static_cast<qint64>(r.total);
    q.download = r.download;
    list.append(q);
  }
  return list;
}

bool QtTransfers::connectToServer(const QString& host, quint16 port) {
  return Check(client_->Connect(S(host), port));
}

bool QtTransfers::disconnectFromServer() { return Check(client_->Disconnect()); }

bool QtTransfers::addTransFile(const QString& path, const QString& name, qint64 uid,
                               qint64 sender, qint64 receiver, qint64 messageId,
                               const QString& md5, int priority) {
  return Check(AddTransFile(*client_, S(path), S(name), uid, sender, receiver, messageId, S(md5),
                            Priority(priority)));
}

bool QtTransfers::sendFile(const QString& path, const QString& name, qint64 uid, qint64 sender,
                           qint64 receiver, qint64 messageId, const QString& md5,
                           int priority) {
  return Check(SendFile(*client_, S(path), S(name), uid, sender, receiver, messageId, S(md5),
                        Priority(priority)));
}

bool QtTransfers::sendAvatar(const QString& path, const QString& name, qint64 uid,
                             const QString& token) {
  UploadSpec spec = MakeUploadSpec(S(path), S(name), uid, uid, 0, 0, std::string(), 0,
                                   /*hold=*/false);
  spec.token = S(token);
  spec.avatar = true;
  return Check(client_->AddTransFile(spec));
}

bool QtTransfers::batchSend(const QString& name) { return Check(client_->BatchSend(S(name))); }

bool QtTransfers::setMessageId(const QString& name, qint64 messageId) {
  return Check(client_->SetMessageId(S(name), messageId));
}

bool QtTransfers::computeMd5(const QString& path) { return Check(client_->ComputeMd5(S(path))); }

bool QtTransfers::addDownloadFile(const QString& name, qint64 messageId, qint64 uid,
                                  const QString& token, const QString& destDir,
                                  const QString& md5, int priority) {
  return Check(AddDownloadFile(*client_, S(name), messageId, uid, S(token), S(destDir), S(md5),
                               Priority(priority)));
}

bool QtTransfers::addAvatarDownload(const QString& name, const QString& avatarName, qint64 uid,
                                    const QString& token, const QString& destDir,
                                    const QString& clientPath, const QString& reqType) {
  return Check(AddAvatarDownload(*client_, S(name), S(avatarName), uid, S(token), S(destDir),
                                 S(clientPath), S(reqType)));
}

bool QtTransfers::startDownload(const QString& name) {
  return Check(client_->StartDownload(S(name)));
}

bool QtTransfers::pause(const QString& name) { return Check(client_->Pause(S(name))); }

bool QtTransfers::resume(const QString& name) { return Check(client_->Resume(S(name))); }

bool QtTransfers::retry(const QString& name) { return Check(client_->Retry(S(name))); }

bool QtTransfers::cancel(const QString& name) { return Check(client_->Cancel(S(name))); }

bool QtTransfers::resumeOffered(const QString& name) {
  return Check(client_->ResumeOffered(S(name)));
}

bool QtTransfers::discardOffered(const QString& name) {
  return Check(client_->DiscardOffered(S(name)));
}

bool QtTransfers::shutdown(int timeoutMs) {
  return Check(client_->ShutdownWithin(static_cast<std::uint32_t>(qMax(0, timeoutMs))));
}

void QtTransfers::customEvent(QEvent* event) {
  if (event->type() == Delivery::type()) {
    static_cast<Delivery*>(event)->Run(this);
    return;
  }
  QObject::customEvent(event);
}

}  // namespace chatxfer
