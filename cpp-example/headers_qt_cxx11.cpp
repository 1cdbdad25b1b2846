// The Qt adapter (chatxfer_qt.h, with chatxfer.hpp) as the llfcchat client
// compiles it: Qt 5, C++11, -Wall -Wextra -Werror -pedantic
// (cpp-example/CMakeLists.txt; its source and moc output are built the same
// way). The program checks that refusals come back with their reason, and
// that a library event reaches a slot as a signal on the object's thread:
// it connects to a loopback port nothing listens on, 1, and waits for
// connectionChanged(false, ...).
#include "chatxfer.hpp"
#include "chatxfer_qt.h"

#include <QCoreApplication>
#include <QThread>
#include <QTimer>

#include <cstdio>

int main(int argc, char** argv) {
  QCoreApplication app(argc, argv);
  std::printf("built with Qt %s\n", QT_VERSION_STR);
  int failures = 0;
  {
    chatxfer::QtTransfers xfer;
    // Refused at once (not connected yet), with the status and the text.
    bool added = xfer.addTransFile("/nonexistent/chatxfer-qt-cxx11", "a.bin", 1, 1, 2, 3);
    std::printf("addTransFile before connectToServer: %s\n", qPrintable(xfer.errorString()));
    if (added || xfer.lastStatus() == chatxfer::Status::Ok || xfer.errorString().isEmpty())
      ++failures;
    bool connected = xfer.connectToServer(QString(), 0);
    std::printf("connectToServer(\"\", 0): %s\n", qPrintable(xfer.errorString()));
    if (connected || xfer.lastStatus() != chatxfer::Status::InvalidArgument) ++failures;

    bool down = false, on_thread = false;
    QObject::connect(&xfer, &chatxfer::QtTransfers::connectionChanged, &app,
                     [&](bool up, const QString& detail, qint64 retry_in_ms) {
                       std::printf("connectionChanged(%s, \"%s\", %lld)\n", up ? "true" : "false",
                                   qPrintable(detail), static_cast<long long>(retry_in_ms));
                       on_thread = QThread::currentThread() == app.thread();
                       down = !up;
                       app.quit();
                     });
    if (!xfer.connectToServer("127.0.0.1", 1)) ++failures;
    // A guard against a hang, not a wait: the event normally comes at once.
    QTimer::singleShot(30000, &app, [&] { app.quit(); });
    app.exec();
    if (!down || !on_thread) {
      std::printf("no connectionChanged(false) on the object's thread (seen: %d, thread: %d)\n",
                  down, on_thread);
      ++failures;
    }
    xfer.shutdown(0);
  }
  chatxfer::ShutdownLibrary();
  std::printf("%s\n", failures == 0 ? "qt adapter c++11: ok" : "qt adapter c++11: FAILED");
  return failures == 0 ? 0 : 1;
}
