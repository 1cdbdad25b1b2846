// The Qt adapter's lifetime against a live transfer (run by tools/tests/cpp.rs
// against a `chatxfer serve` process, built with AddressSanitizer like
// upload_asan; C++11, Qt 5, warnings as errors):
//
//   qt_lifetime HOST PORT FILE
//
// Round after round, a QtTransfers uploads FILE and is destroyed (deleteLater
// from its own progress slot) while the library is still sending and
// delivering events, so the sink races the destructor; the last round lives
// in a worker thread, where every signal must arrive, and is destroyed
// there. Exits 0 only if every round saw progress mid-upload on the right
// thread and was destroyed; a use after free shows as a sanitizer report.
#include "chatxfer_qt.h"

#include <QCoreApplication>
#include <QThread>
#include <QTimer>

#include <cstdio>
#include <memory>

namespace {

const int kRounds = 8;  // the last one in a worker thread

struct Run {
  QString host, file;
  quint16 port = 0;
  QThread worker;
  int round = 0, mid_upload = 0, wrong_thread = 0, destroyed = 0;
};

void StartRound(Run& run);

// One round: upload, then delete at the first progress short of the end.
void Round(Run& run, bool in_worker) {
  chatxfer::ClientOptions opt = chatxfer::DefaultOptions();
  opt.server_appends = false;  // `chatxfer serve` writes at the offset
  chatxfer::QtTransfers* xfer = new chatxfer::QtTransfers(opt);
  QThread* home = in_worker ? &run.worker : QCoreApplication::instance()->thread();
  if (in_worker) xfer->moveToThread(&run.worker);
  std::shared_ptr<bool> deleting = std::make_shared<bool>(false);
  // `xfer` as the context: the slots run on its thread.
  QObject::connect(xfer, &chatxfer::QtTransfers::progress, xfer,
                   [&run, xfer, home, deleting](const QString&, qint64 done, qint64 total, double) {
                     if (QThread::currentThread() != home) ++run.wrong_thread;
                     if (done >= total || *deleting) return;
                     *deleting = true;
                     ++run.mid_upload;
                     xfer->deleteLater();
                   });
  QObject::connect(xfer, &chatxfer::QtTransfers::failed, xfer,
                   [](const QString& name, qint64 code, const QString& message) {
                     std::printf("%s failed: %lld %s\n", qPrintable(name),
                                 static_cast<long long>(code), qPrintable(message));
                   });
  // Queued to the main thread: the next round starts from there.
  QObject::connect(xfer, &QObject::destroyed, QCoreApplication::instance(), [&run] {
    ++run.destroyed;
    StartRound(run);
  }, Qt::QueuedConnection);
  QString name = QString("lifetime-%1.bin").arg(run.round);
  // The calls are thread-safe; from the main thread also for the worker's.
  if (!xfer->connectToServer(run.host, run.port) ||
      !xfer->sendFile(run.file, name, 1001, 1001, 2002, run.round + 1)) {
    std::printf("round %d refused: %s\n", run.round, qPrintable(xfer->errorString()));
    QCoreApplication::exit(1);
  }
}

void StartRound(Run& run) {
  if (run.round == kRounds) {
    QCoreApplication::quit();
    return;
  }
  bool in_worker = run.round == kRounds - 1;
  ++run.round;
  Round(run, in_worker);
}

}  // namespace

int main(int argc, char** argv) {
  QCoreApplication app(argc, argv);
  if (argc != 4) {
    std::fprintf(stderr, "usage: qt_lifetime HOST PORT FILE\n");
    return 2;
  }
  Run run;
  run.host = QString::fromLocal8Bit(argv[1]);
  run.port = static_cast<quint16>(QString::fromLocal8Bit(argv[2]).toUInt());
  run.file = QString::fromLocal8Bit(argv[3]);
  run.worker.start();
  QTimer::singleShot(0, &app, [&run] { StartRound(run); });
  // A guard against a hang, not a wait: the rounds take a second or two.
  QTimer::singleShot(60000, &app, [] {
    std::printf("timed out\n");
    QCoreApplication::exit(1);
  });
  int rc = app.exec();
  run.worker.quit();
  run.worker.wait();
  chatxfer::ShutdownLibrary();
  bool ok = rc == 0 && run.mid_upload == kRounds && run.destroyed == kRounds &&
            run.wrong_thread == 0;
  std::printf("rounds %d, destroyed mid-upload %d, destroyed %d, signals on a wrong thread %d: %s\n",
              run.round, run.mid_upload, run.destroyed, run.wrong_thread, ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
