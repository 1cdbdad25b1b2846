// The Qt adapter (chatxfer_qt.h, with chatxfer.hpp) as the llfcchat client
// compiles it: Qt 5, C++11, -Wall -Wextra -Werror -pedantic
// (cpp-example/CMakeLists.txt; its source and moc output are built the same
// way). The program checks that refusals come back with their reason and
// that library events reach slots as signals on the object's thread:
//   * a connection to a loopback port nothing listens on, 1:
//     connectionChanged(false, ...);
//   * computeMd5 of a file it writes: md5Progress, then md5Ready with the
//     md5 QCryptographicHash computes;
//   * with HOST PORT DIR (a `chatxfer serve`): an avatar uploaded
//     (sendAvatar) and downloaded back (addAvatarDownload): avatarSaved
//     with the client path of its request, the bytes identical.
//
//   headers_qt_cxx11 [HOST PORT DIR]
#include "chatxfer.hpp"
#include "chatxfer_qt.h"

#include <QCoreApplication>
#include <QCryptographicHash>
#include <QDir>
#include <QFile>
#include <QThread>
#include <QTimer>

#include <cstdio>

namespace {

int failures = 0;

void Expect(bool ok, const char* what) {
  std::printf("%s: %s\n", what, ok ? "ok" : "FAILED");
  if (!ok) ++failures;
}

// Runs the event loop until a slot calls app.quit(); the timer only guards
// against a hang (the events normally come within milliseconds).
void RunUntilQuit(QCoreApplication& app) {
  QTimer guard;
  guard.setSingleShot(true);
  QObject::connect(&guard, &QTimer::timeout, &app, [] {
    std::printf("timed out waiting for a signal\n");
    QCoreApplication::quit();
  });
  guard.start(30000);
  app.exec();
}

QByteArray FileBytes(const QString& path) {
  QFile f(path);
  return f.open(QIODevice::ReadOnly) ? f.readAll() : QByteArray();
}

}  // namespace

int main(int argc, char** argv) {
  QCoreApplication app(argc, argv);
  std::printf("built with Qt %s\n", QT_VERSION_STR);
  const bool with_server = argc == 4;
  const QString dir = with_server ? QString::fromLocal8Bit(argv[3]) : QDir::tempPath();
  {
    chatxfer::QtTransfers xfer;
    bool on_thread = true;
    QObject::connect(&xfer, &chatxfer::QtTransfers::stateChanged, &app,
                     [&](const QString&, chatxfer::QtTransfers::State) {
                       on_thread = on_thread && QThread::currentThread() == app.thread();
                     });
    // Refused at once (not connected yet), with the status and the text.
    bool added = xfer.addTransFile("/nonexistent/chatxfer-qt-cxx11", "a.bin", 1, 1, 2, 3);
    std::printf("addTransFile before connectToServer: %s\n", qPrintable(xfer.errorString()));
    Expect(!added && xfer.lastStatus() != chatxfer::Status::Ok && !xfer.errorString().isEmpty(),
           "refusal with its reason");
    bool connected = xfer.connectToServer(QString(), 0);
    Expect(!connected && xfer.lastStatus() == chatxfer::Status::InvalidArgument,
           "connectToServer(\"\", 0) refused as INVALID_ARGUMENT");

    // A library event from its connection attempt.
    bool down = false;
    QObject::connect(&xfer, &chatxfer::QtTransfers::connectionChanged, &app,
                     [&](bool up, const QString& detail, qint64 retry_in_ms) {
                       if (down) return;  // the retries that follow
                       std::printf("connectionChanged(%s, \"%s\", %lld)\n", up ? "true" : "false",
                                   qPrintable(detail), static_cast<long long>(retry_in_ms));
                       on_thread = on_thread && QThread::currentThread() == app.thread();
                       down = !up;
                       app.quit();
                     });
    Expect(xfer.connectToServer("127.0.0.1", 1), "connectToServer(127.0.0.1, 1) accepted");
    RunUntilQuit(app);
    Expect(down, "connectionChanged(false) for a refused connection");
    // The md5 of a file, hashed on a library thread (the client is started:
    // ComputeMd5 needs a connected client, as the app's is after login).
    const QString md5_file = QDir(dir).filePath("chatxfer-qt-md5.bin");
    QByteArray content(3 << 20, 'x');
    for (int i = 0; i < content.size(); ++i) content[i] = static_cast<char>(i * 7 + i / 4096);
    {
      QFile f(md5_file);
      Expect(f.open(QIODevice::WriteOnly) && f.write(content) == content.size(), "md5 file written");
    }
    int md5_progress = 0;
    QString md5, md5_error;
    QObject::connect(&xfer, &chatxfer::QtTransfers::md5Progress, &app,
                     [&](const QString& path, qint64, qint64) {
                       on_thread = on_thread && QThread::currentThread() == app.thread();
                       if (path == md5_file) ++md5_progress;
                     });
    QObject::connect(&xfer, &chatxfer::QtTransfers::md5Ready, &app,
                     [&](const QString& path, const QString& sum, const QString& error) {
                       on_thread = on_thread && QThread::currentThread() == app.thread();
                       if (path != md5_file) return;
                       md5 = sum, md5_error = error;
                       app.quit();
                     });
    bool hashing = xfer.computeMd5(md5_file);
    if (!hashing) std::printf("computeMd5: %s\n", qPrintable(xfer.errorString()));
    Expect(hashing, "computeMd5 accepted");
    RunUntilQuit(app);
    const QString want = QCryptographicHash::hash(content, QCryptographicHash::Md5).toHex();
    std::printf("md5Ready %s (want %s), %d md5Progress\n", qPrintable(md5), qPrintable(want),
                md5_progress);
    Expect(md5 == want && md5_error.isEmpty() && md5_progress > 0, "md5 signals");
    Expect(!xfer.computeMd5("/nonexistent/chatxfer-qt-md5"), "computeMd5 of a missing file refused");
    QFile::remove(md5_file);

    Expect(on_thread, "every signal on the object's thread");
    xfer.shutdown(0);
  }

  if (with_server) {
    // An avatar up (1031) and down (1033), routed back by its request.
    chatxfer::ClientOptions opt = chatxfer::DefaultOptions();
    opt.server_appends = false;  // `chatxfer serve` writes at the offset
    chatxfer::QtTransfers xfer(opt);
    const QString avatar = QDir(dir).filePath("me.png"), into = QDir(dir).filePath("icons");
    QByteArray bytes(60000, '\0');
    for (int i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 13 + i / 256);
    {
      QFile f(avatar);
      Expect(f.open(QIODevice::WriteOnly) && f.write(bytes) == bytes.size(), "avatar written");
    }
    QString saved_path, client_path, req_type;
    bool on_thread = true;
    QObject::connect(&xfer, &chatxfer::QtTransfers::completed, &app,
                     [&](const QString& name, const QString&, qint64) {
                       on_thread = on_thread && QThread::currentThread() == app.thread();
                       if (name != "me.png") return;
                       // Uploaded: fetch it back as the client fetches its own icon.
                       Expect(xfer.addAvatarDownload("self-icon", "me.png", 1001, "tok", into,
                                                     "/home/u/.llfcchat/self_icon.png",
                                                     "self_icon") &&
                                  xfer.startDownload("self-icon"),
                              "avatar download started");
                     });
    QObject::connect(&xfer, &chatxfer::QtTransfers::avatarSaved, &app,
                     [&](const QString& name, const QString& path, const QString& client,
                         const QString& type) {
                       on_thread = on_thread && QThread::currentThread() == app.thread();
                       if (name != "self-icon") return;
                       saved_path = path, client_path = client, req_type = type;
                       app.quit();
                     });
    QObject::connect(&xfer, &chatxfer::QtTransfers::failed, &app,
                     [&](const QString& name, qint64 code, const QString& message) {
                       std::printf("%s failed: %lld %s\n", qPrintable(name),
                                   static_cast<long long>(code), qPrintable(message));
                       app.quit();
                     });
    Expect(xfer.connectToServer(QString::fromLocal8Bit(argv[1]),
                                static_cast<quint16>(QString::fromLocal8Bit(argv[2]).toUInt())),
           "connectToServer");
    Expect(xfer.sendAvatar(avatar, "me.png", 1001, "tok"), "sendAvatar accepted");
    RunUntilQuit(app);
    std::printf("avatarSaved(self-icon, %s, %s, %s)\n", qPrintable(saved_path),
                qPrintable(client_path), qPrintable(req_type));
    Expect(client_path == "/home/u/.llfcchat/self_icon.png" && req_type == "self_icon" &&
               FileBytes(saved_path) == bytes,
           "avatar saved, routed by its request, bytes identical");
    Expect(on_thread, "every avatar signal on the object's thread");
    xfer.shutdown();
  }
  chatxfer::ShutdownLibrary();
  std::printf("%s\n", failures == 0 ? "qt adapter c++11: ok" : "qt adapter c++11: FAILED");
  return failures == 0 ? 0 : 1;
}
