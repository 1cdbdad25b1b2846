// chat_demo: a chat pane in the style of the llfcchat client whose picture
// and file bubbles upload through chatxfer, each with a circular percentage
// while it uploads; clicking a bubble pauses or resumes it. Incoming
// pictures (on the left) download through chatxfer the same way and fill in
// when saved.
//
//   chat_demo [--server HOST:PORT] [FILE...]    interactive (without --server:
//                                               a `chatxfer serve` it starts)
//   chat_demo --selftest OUT.png                generates files, uploads them to
//       a `chatxfer serve` it starts, pauses and resumes one by clicking its
//       bubble, grabs the window into OUT.png (and OUT-during.png while one is
//       paused), then downloads sunset.png back by its message id into an
//       incoming bubble: where a file stands in for the folder, so it fails
//       (OUT-failed.png); the folder is made and the bubble clicked to retry;
//       it is paused once (OUT-download.png) and completes. Exits 0 only if
//       every stored copy has the source's md5, the downloaded copy is
//       byte-identical, and every signal came on the GUI thread.
//
// Threading: the transfers are a chatxfer::QtTransfers (chatxfer_qt.h): the
// library's callbacks arrive as its signals, emitted on the GUI thread, and
// only the GUI thread touches widgets.
#include <QApplication>
#include <QCryptographicHash>
#include <QDir>
#include <QFile>
#include <QFileDialog>
#include <QFileInfo>
#include <QHBoxLayout>
#include <QImage>
#include <QLabel>
#include <QMouseEvent>
#include <QPainter>
#include <QPainterPath>
#include <QPointer>
#include <QProcess>
#include <QPushButton>
#include <QRandomGenerator>
#include <QRegularExpression>
#include <QScrollArea>
#include <QScrollBar>
#include <QTemporaryDir>
#include <QTextEdit>
#include <QThread>
#include <QTimer>
#include <QVBoxLayout>
#include <QWidget>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>

#include "chatxfer_qt.h"

namespace {

constexpr std::int64_t kSelf = 1001;  // uid of the sender (this user)
constexpr std::int64_t kPeer = 2002;

QString HumanSize(qint64 n) {
  if (n >= 1 << 20) return QString::number(n / double(1 << 20), 'f', 1) + " MB";
  if (n >= 1 << 10) return QString::number(n / double(1 << 10), 'f', 0) + " KB";
  return QString::number(n) + " B";
}

QByteArray Md5Of(const QString& path) {
  QFile f(path);
  if (!f.open(QIODevice::ReadOnly)) return {};
  QCryptographicHash h(QCryptographicHash::Md5);
  h.addData(&f);
  return h.result().toHex();
}

QPixmap Avatar(const QString& letter, QColor color, int size = 40) {
  QPixmap pm(size, size);
  pm.fill(Qt::transparent);
  QPainter p(&pm);
  p.setRenderHint(QPainter::Antialiasing);
  p.setBrush(color);
  p.setPen(Qt::NoPen);
  p.drawRoundedRect(QRectF(0, 0, size, size), 6, 6);
  p.setPen(Qt::white);
  QFont f = p.font();
  f.setBold(true);
  f.setPixelSize(size / 2);
  p.setFont(f);
  p.drawText(QRectF(0, 0, size, size), Qt::AlignCenter, letter);
  return pm;
}

// One picture or file message with its upload state.
class Bubble : public QWidget {
 public:
  enum class Phase { Waiting, Sending, Paused, Done, Failed };

  Bubble(const QString& path, bool picture, QWidget* parent = nullptr)
      : QWidget(parent), path_(path), picture_(picture) {
    QFileInfo fi(path);
    name_ = key_ = fi.fileName();
    size_ = fi.size();
    if (picture_) {
      QImage img(path);
      thumb_ = QPixmap::fromImage(
          img.scaled(220, 160, Qt::KeepAspectRatio, Qt::SmoothTransformation));
      setFixedSize(thumb_.size().expandedTo(QSize(60, 60)));
    } else {
      setFixedSize(250, 84);
    }
    setCursor(Qt::PointingHandCursor);
    setToolTip(tr("Click to pause or resume; a failed one to retry"));
  }

  // An incoming picture, downloaded as transfer `key`: a grey placeholder
  // with the percentage until SetPicture(the saved file).
  Bubble(const QString& key, QWidget* parent = nullptr)
      : QWidget(parent), key_(key), picture_(true), incoming_(true) {
    QPixmap pm(220, 147);
    pm.fill(QColor(0xd8, 0xd8, 0xd8));
    thumb_ = pm;
    setFixedSize(thumb_.size());
    setCursor(Qt::PointingHandCursor);
    setToolTip(tr("Click to pause or resume; a failed one to retry"));
  }

  // The download was saved at `path`: show it.
  bool SetPicture(const QString& path) {
    path_ = path;
    QImage img(path);
    if (img.isNull()) return false;
    thumb_ = QPixmap::fromImage(
        img.scaled(220, 160, Qt::KeepAspectRatio, Qt::SmoothTransformation));
    setFixedSize(thumb_.size().expandedTo(QSize(60, 60)));
    update();
    return true;
  }

  std::function<void(Bubble*)> onClick;

  void SetProgress(qint64 done, qint64 total) {
    fraction_ = total ? double(done) / double(total) : 1.0;
    update();
  }
  void SetPhase(Phase p) {
    phase_ = p;
    if (p == Phase::Done) fraction_ = 1.0;
    update();
  }
  Phase phase() const { return phase_; }
  const QString& path() const { return path_; }
  // The transfer's name.
  const QString& key() const { return key_; }

 protected:
  void mouseReleaseEvent(QMouseEvent* e) override {
#if QT_VERSION >= QT_VERSION_CHECK(6, 0, 0)
    QPoint at = e->position().toPoint();
#else
    QPoint at = e->pos();  // Qt 5: position() does not exist yet
#endif
    if (e->button() == Qt::LeftButton && rect().contains(at) && onClick)
      onClick(this);
  }

  void paintEvent(QPaintEvent*) override {
    QPainter p(this);
    p.setRenderHint(QPainter::Antialiasing);
    QRectF r = rect().adjusted(0.5, 0.5, -0.5, -0.5);
    QPainterPath clip;
    clip.addRoundedRect(r, 8, 8);
    if (picture_) {
      p.setClipPath(clip);
      p.drawPixmap(0, 0, thumb_);
      p.setClipping(false);
      p.setPen(QPen(QColor(0, 0, 0, 40), 1));
      p.setBrush(Qt::NoBrush);
      p.drawPath(clip);
    } else {
      PaintFileCard(p, r, clip);
    }
    if (phase_ != Phase::Done) {
      PaintOverlay(p, clip);
    } else if (!incoming_) {
      // Sent: a small check badge in the corner.
      QRectF badge(width() - 24, height() - 24, 18, 18);
      p.setPen(Qt::NoPen);
      p.setBrush(QColor(0x12, 0x96, 0x11));
      p.drawEllipse(badge);
      p.setPen(QPen(Qt::white, 2, Qt::SolidLine, Qt::RoundCap, Qt::RoundJoin));
      QPointF o = badge.topLeft();
      p.drawPolyline(QPolygonF(QVector<QPointF>{o + QPointF(5, 9.5), o + QPointF(8, 12.5), o + QPointF(13, 6)}));
    }
  }

 private:
  void PaintFileCard(QPainter& p, const QRectF& r, const QPainterPath& clip) {
    p.setPen(QPen(QColor(0xdd, 0xdd, 0xdd), 1));
    p.setBrush(Qt::white);
    p.drawPath(clip);
    // Name and size on the left.
    QFont f = p.font();
    f.setPixelSize(14);
    p.setFont(f);
    p.setPen(QColor(0x22, 0x22, 0x22));
    QRectF text = r.adjusted(14, 12, -70, -12);
    p.drawText(text.adjusted(0, 0, 0, -text.height() / 2), Qt::AlignLeft | Qt::AlignVCenter,
               p.fontMetrics().elidedText(name_, Qt::ElideMiddle, int(text.width())));
    f.setPixelSize(12);
    p.setFont(f);
    p.setPen(QColor(0x99, 0x99, 0x99));
    p.drawText(text.adjusted(0, text.height() / 2, 0, 0), Qt::AlignLeft | Qt::AlignVCenter,
               HumanSize(size_));
    // A document icon with the extension on the right.
    QString ext = QFileInfo(name_).suffix().toUpper().left(4);
    QColor band = ext == "ZIP" ? QColor(0xf0, 0xa0, 0x30)
                  : ext == "MP4" ? QColor(0x7b, 0x61, 0xff)
                  : ext == "PDF" ? QColor(0xe5, 0x48, 0x3d)
                                 : QColor(0x3d, 0x8b, 0xf2);
    QRectF icon(r.right() - 56, r.top() + 14, 40, 52);
    QPainterPath page;
    page.moveTo(icon.topLeft());
    page.lineTo(icon.right() - 12, icon.top());
    page.lineTo(icon.right(), icon.top() + 12);
    page.lineTo(icon.bottomRight());
    page.lineTo(icon.bottomLeft());
    page.closeSubpath();
    p.setPen(Qt::NoPen);
    p.setBrush(band);
    p.drawPath(page);
    p.setBrush(band.lighter(140));
    QPainterPath fold;
    fold.moveTo(icon.right() - 12, icon.top());
    fold.lineTo(icon.right() - 12, icon.top() + 12);
    fold.lineTo(icon.right(), icon.top() + 12);
    fold.closeSubpath();
    p.drawPath(fold);
    f.setPixelSize(11);
    f.setBold(true);
    p.setFont(f);
    p.setPen(Qt::white);
    p.drawText(icon.adjusted(0, 16, 0, 0), Qt::AlignHCenter | Qt::AlignVCenter, ext);
  }

  // A dimmed cover with a circular percentage (or the reason it waits).
  void PaintOverlay(QPainter& p, const QPainterPath& clip) {
    p.setPen(Qt::NoPen);
    p.setBrush(QColor(0, 0, 0, phase_ == Phase::Failed ? 110 : 80));
    p.drawPath(clip);
    QPointF c = rect().center();
    const double radius = 22;
    QRectF ring(c.x() - radius, c.y() - radius, 2 * radius, 2 * radius);
    p.setBrush(QColor(0, 0, 0, 90));
    p.drawEllipse(ring.adjusted(-4, -4, 4, 4));
    p.setBrush(Qt::NoBrush);
    p.setPen(QPen(QColor(255, 255, 255, 70), 4));
    p.drawEllipse(ring);
    QColor arc = phase_ == Phase::Failed   ? QColor(0xff, 0x60, 0x60)
                 : phase_ == Phase::Paused ? QColor(0xff, 0xd0, 0x60)
                                           : QColor(0x9e, 0xea, 0x6a);
    p.setPen(QPen(arc, 4, Qt::SolidLine, Qt::RoundCap));
    p.drawArc(ring, 90 * 16, -int(fraction_ * 360 * 16));
    QFont f = p.font();
    f.setBold(true);
    f.setPixelSize(12);
    p.setFont(f);
    p.setPen(Qt::white);
    QString label = phase_ == Phase::Failed ? "!" : QString::number(int(fraction_ * 100)) + "%";
    p.drawText(ring, Qt::AlignCenter, label);
    QString under = phase_ == Phase::Paused    ? tr("paused - click to resume")
                    : phase_ == Phase::Waiting ? tr("waiting")
                    : phase_ == Phase::Failed  ? tr("failed - click to retry")
                                               : QString();
    if (!under.isEmpty()) {
      f.setPixelSize(11);
      f.setBold(false);
      p.setFont(f);
      p.drawText(QRectF(0, ring.bottom() + 6, width(), 16), Qt::AlignHCenter, under);
    }
  }

  QString path_, name_, key_;
  qint64 size_ = 0;
  bool picture_;
  bool incoming_ = false;
  QPixmap thumb_;
  double fraction_ = 0;
  Phase phase_ = Phase::Waiting;
};

class ChatWindow : public QWidget {
 public:
  ChatWindow() {
    setWindowTitle("llfcchat - chatxfer demo");
    resize(560, 900);
    setStyleSheet("ChatWindow { background: #f5f5f5; }");
    auto* outer = new QVBoxLayout(this);
    outer->setContentsMargins(0, 0, 0, 0);
    outer->setSpacing(0);

    auto* title = new QWidget;
    title->setFixedHeight(56);
    title->setStyleSheet("background: #ededed;");
    auto* tl = new QHBoxLayout(title);
    tl->setContentsMargins(20, 0, 16, 0);
    auto* who = new QLabel("Alice");
    who->setStyleSheet("font-size: 17px; color: #111; border: none;");
    status_ = new QLabel("connecting...");
    status_->setStyleSheet("font-size: 12px; color: #999; border: none;");
    tl->addWidget(who);
    tl->addStretch();
    tl->addWidget(status_);
    outer->addWidget(title);
    auto* line = new QWidget;
    line->setFixedHeight(1);
    line->setStyleSheet("background: #dcdcdc;");
    outer->addWidget(line);

    auto* scroll = new QScrollArea;
    scroll->setWidgetResizable(true);
    scroll->setFrameShape(QFrame::NoFrame);
    scroll->setStyleSheet("QScrollArea { background: #f5f5f5; }");
    auto* list = new QWidget;
    list->setStyleSheet("background: #f5f5f5;");
    rows_ = new QVBoxLayout(list);
    rows_->setContentsMargins(16, 16, 16, 16);
    rows_->setSpacing(14);
    rows_->addStretch();
    scroll->setWidget(list);
    scroll_ = scroll;
    // Keep the newest message in view as rows are added (and grow).
    connect(scroll->verticalScrollBar(), &QScrollBar::rangeChanged, this,
            [scroll](int, int max) { scroll->verticalScrollBar()->setValue(max); });
    outer->addWidget(scroll, 1);

    auto* line2 = new QWidget;
    line2->setFixedHeight(1);
    line2->setStyleSheet("background: #dcdcdc;");
    outer->addWidget(line2);
    auto* input = new QWidget;
    input->setFixedHeight(130);
    input->setStyleSheet("background: #ffffff;");
    auto* il = new QVBoxLayout(input);
    il->setContentsMargins(16, 8, 16, 10);
    auto* tools = new QHBoxLayout;
    auto* attach = new QPushButton("+ File");
    attach->setFlat(true);
    attach->setStyleSheet("border: none; color: #555; font-size: 13px;");
    connect(attach, &QPushButton::clicked, this, [this] {
      for (const QString& f : QFileDialog::getOpenFileNames(this, "Send files")) AddFile(f);
    });
    tools->addWidget(attach);
    tools->addStretch();
    il->addLayout(tools);
    auto* edit = new QTextEdit;
    edit->setPlaceholderText("Type a message");
    edit->setStyleSheet("border: none; font-size: 14px;");
    il->addWidget(edit, 1);
    auto* send = new QPushButton("Send");
    send->setFixedSize(84, 30);
    send->setStyleSheet(
        "QPushButton { background: #129611; color: white; border: none; border-radius: 4px; }");
    auto* sl = new QHBoxLayout;
    sl->addStretch();
    sl->addWidget(send);
    il->addLayout(sl);
    outer->addWidget(input);
  }

  // The transfers' signals drive the bubbles (connected here: they are
  // emitted on this, the GUI, thread).
  void SetTransfers(chatxfer::QtTransfers* t) {
    transfers_ = t;
    using X = chatxfer::QtTransfers;
    connect(t, &X::progress, this, &ChatWindow::OnProgress);
    connect(t, &X::stateChanged, this, &ChatWindow::OnState);
    connect(t, &X::completed, this, &ChatWindow::OnCompleted);
    connect(t, &X::failed, this, &ChatWindow::OnFailed);
    connect(t, &X::saved, this, &ChatWindow::OnSaved);
    connect(t, &X::connectionChanged, this, &ChatWindow::OnConnection);
  }

  // Events, on the GUI thread only.
  void OnProgress(const QString& name, qint64 done, qint64 total) {
    CheckThread();
    if (Bubble* b = Find(name)) b->SetProgress(done, total);
  }
  void OnState(const QString& name, chatxfer::QtTransfers::State s) {
    CheckThread();
    Bubble* b = Find(name);
    if (!b) return;
    switch (s) {
      case chatxfer::QtTransfers::Queued: b->SetPhase(Bubble::Phase::Waiting); break;
      case chatxfer::QtTransfers::Sending: b->SetPhase(Bubble::Phase::Sending); break;
      case chatxfer::QtTransfers::Paused: b->SetPhase(Bubble::Phase::Paused); break;
      case chatxfer::QtTransfers::Completed: b->SetPhase(Bubble::Phase::Done); break;
      case chatxfer::QtTransfers::Failed:
      case chatxfer::QtTransfers::Cancelled: b->SetPhase(Bubble::Phase::Failed); break;
    }
  }
  void OnCompleted(const QString& name, const QString& md5) {
    CheckThread();
    if (Bubble* b = Find(name)) b->SetPhase(Bubble::Phase::Done);
    completed_[name] = md5;
    if (onFinished) onFinished();
  }
  void OnFailed(const QString& name, qint64 code, const QString& message) {
    CheckThread();
    if (Bubble* b = Find(name)) b->SetPhase(Bubble::Phase::Failed);
    failed_[name] = QString("%1 (%2)").arg(message).arg(code);
    std::fprintf(stderr, "%s: failed: %s\n", qPrintable(name), qPrintable(failed_[name]));
    if (onFinished) onFinished();
  }
  void OnSaved(const QString& name, const QString& path) {
    CheckThread();
    saved_[name] = path;
    if (Bubble* b = Find(name)) b->SetPicture(path);
  }
  void OnConnection(bool up, const QString& detail, qint64 retry_in_ms) {
    CheckThread();
    if (up)
      status_->setText("online");
    else if (retry_in_ms >= 0)
      status_->setText(QString("reconnecting in %1 s...").arg(retry_in_ms / 1000.0, 0, 'f', 1));
    else
      status_->setText("offline");
    status_->setToolTip(detail);
  }

  void AddText(const QString& text, bool mine) {
    auto* label = new QLabel(text);
    label->setWordWrap(true);
    // Word-wrapped labels do not size themselves: as wide as the text, up to 320.
    label->setFixedWidth(qMin(320, label->fontMetrics().horizontalAdvance(text) + 30));
    label->setStyleSheet(QString("background: %1; color: #111; border-radius: 6px; padding: 9px "
                                 "12px; font-size: 14px;")
                             .arg(mine ? "#9eea6a" : "#ffffff"));
    AddRow(label, mine);
  }

  // Adds a bubble and registers the upload held (the Qt client's
  // AddTransFile); with `send`, starts it at once (BatchSend, which the
  // client calls once the ChatServer confirmed the message).
  Bubble* AddFile(const QString& path, bool send = true) {
    QString name = QFileInfo(path).fileName();
    bool picture = !QImage(path).isNull();
    auto* b = new Bubble(path, picture);
    b->onClick = [this](Bubble* bubble) { Toggle(bubble); };
    bubbles_[name] = b;
    AddRow(b, true);
    if (!transfers_) return b;
    message_ids_[name] = ++message_id_;
    if (!transfers_->addTransFile(path, name, kSelf, kSelf, kPeer, message_id_, QString(),
                                  picture ? 1 : 0))
      Refused(name);
    else if (send)
      Send(name);
    return b;
  }

  // An incoming picture message: a bubble on the left, and the download of
  // message `message_id`'s file into `dest_dir` (AddDownloadFile registers
  // it held, StartDownload starts it; the percentage fills as it arrives,
  // the picture shows once saved).
  Bubble* AddIncomingPicture(const QString& key, std::int64_t message_id, const QString& dest_dir) {
    auto* b = new Bubble(key);
    b->onClick = [this](Bubble* bubble) { Toggle(bubble); };
    bubbles_[key] = b;
    AddRow(b, false);
    if (!transfers_) return b;
    if (!transfers_->addDownloadFile(key, message_id, kSelf, "demo-token", dest_dir, QString(), 1) ||
        !transfers_->startDownload(key)) {
      Refused(key);
      QTimer::singleShot(0, this, [this] {
        if (onFinished) onFinished();
      });
    }
    return b;
  }

  std::int64_t MessageId(const QString& name) const {
    auto it = message_ids_.find(name);
    return it == message_ids_.end() ? 0 : it->second;
  }

  void Send(const QString& name) {
    if (!transfers_->batchSend(name)) Refused(name);
  }

  // The last call on transfers_ refused transfer `name`.
  void Refused(const QString& name) {
    QString why = transfers_->errorString();
    std::fprintf(stderr, "%s: %s\n", qPrintable(name), qPrintable(why));
    if (Bubble* b = Find(name)) b->SetPhase(Bubble::Phase::Failed);
    failed_[name] = why;
  }

  // Clicking a bubble, as the client's PictureBubble: pause it while it
  // transfers, resume it when paused, retry it when it failed.
  void Toggle(Bubble* b) {
    if (!transfers_) return;
    const QString name = b->key();
    bool ok = true;
    const char* what = "";
    if (b->phase() == Bubble::Phase::Paused) {
      what = "resume", ok = transfers_->resume(name);
    } else if (b->phase() == Bubble::Phase::Sending || b->phase() == Bubble::Phase::Waiting) {
      what = "pause", ok = transfers_->pause(name);
    } else if (b->phase() == Bubble::Phase::Failed) {
      what = "retry", ok = transfers_->retry(name);
      if (ok) {
        failed_.erase(name);
        b->SetPhase(Bubble::Phase::Waiting);
      }
    }
    // E.g. WRONG_STATE when the upload completed just before the click.
    if (!ok)
      std::fprintf(stderr, "%s: %s: %s\n", qPrintable(name), what,
                   qPrintable(transfers_->errorString()));
  }

  Bubble* Find(const QString& name) {
    auto it = bubbles_.find(name);
    return it == bubbles_.end() ? nullptr : it->second;
  }

  const std::map<QString, QString>& completed() const { return completed_; }
  const std::map<QString, QString>& failed() const { return failed_; }
  const std::map<QString, QString>& saved() const { return saved_; }
  int off_thread_calls() const { return off_thread_; }

  std::function<void()> onFinished;

 private:
  void AddRow(QWidget* content, bool mine) {
    auto* row = new QHBoxLayout;
    row->setSpacing(10);
    auto* avatar = new QLabel;
    avatar->setPixmap(mine ? Avatar("M", QColor(0x3d, 0x8b, 0xf2)) : Avatar("A", QColor(0xe5, 0x7a, 0x48)));
    avatar->setAlignment(Qt::AlignTop);
    if (mine) {
      row->addStretch();
      row->addWidget(content, 0, Qt::AlignTop);
      row->addWidget(avatar, 0, Qt::AlignTop);
    } else {
      row->addWidget(avatar, 0, Qt::AlignTop);
      row->addWidget(content, 0, Qt::AlignTop);
      row->addStretch();
    }
    rows_->addLayout(row);
    QTimer::singleShot(0, this, [this] {
      scroll_->verticalScrollBar()->setValue(scroll_->verticalScrollBar()->maximum());
    });
  }

  void CheckThread() {
    if (QThread::currentThread() != thread()) ++off_thread_;
  }

  QVBoxLayout* rows_;
  QScrollArea* scroll_;
  QLabel* status_;
  chatxfer::QtTransfers* transfers_ = nullptr;
  std::int64_t message_id_ = 0;
  std::map<QString, Bubble*> bubbles_;
  std::map<QString, std::int64_t> message_ids_;
  std::map<QString, QString> completed_, failed_, saved_;
  int off_thread_ = 0;
};

// --- self-test --------------------------------------------------------------

bool WriteRandom(const QString& path, qint64 size, quint32 seed) {
  QFile f(path);
  if (!f.open(QIODevice::WriteOnly)) return false;
  QRandomGenerator rng(seed);
  QByteArray block(1 << 16, Qt::Uninitialized);
  for (qint64 left = size; left > 0;) {
    rng.fillRange(reinterpret_cast<quint32*>(block.data()), block.size() / 4);
    qint64 n = qMin<qint64>(left, block.size());
    if (f.write(block.constData(), n) != n) return false;
    left -= n;
  }
  return true;
}

bool WritePicture(const QString& path) {
  // 2400x1600, drawn in 1200x800 coordinates.
  QImage img(2400, 1600, QImage::Format_RGB32);
  QPainter p(&img);
  p.setRenderHint(QPainter::Antialiasing);
  p.scale(2, 2);
  QLinearGradient sky(0, 0, 0, 800);
  sky.setColorAt(0, QColor(0x2b, 0x5f, 0xa8));
  sky.setColorAt(0.6, QColor(0xf6, 0xa6, 0x5b));
  sky.setColorAt(1, QColor(0xf9, 0xd7, 0x8c));
  p.fillRect(QRect(0, 0, 1200, 800), sky);
  p.setPen(Qt::NoPen);
  p.setBrush(QColor(0xff, 0xe8, 0x9a));
  p.drawEllipse(QPointF(820, 470), 110, 110);
  QPolygonF far(QVector<QPointF>{{0, 620}, {220, 430}, {420, 580}, {640, 400}, {900, 600}, {1200, 450}, {1200, 800}, {0, 800}});
  p.setBrush(QColor(0x5b, 0x4a, 0x7a));
  p.drawPolygon(far);
  QPolygonF near(QVector<QPointF>{{0, 720}, {300, 560}, {560, 700}, {860, 540}, {1200, 700}, {1200, 800}, {0, 800}});
  p.setBrush(QColor(0x2e, 0x28, 0x48));
  p.drawPolygon(near);
  p.end();
  // Faint film grain: invisible in the thumbnail, but it makes the PNG a few
  // MB, so that its download back can be seen filling in.
  QRandomGenerator rng(7);
  for (int y = 0; y < img.height(); ++y) {
    auto* line = reinterpret_cast<QRgb*>(img.scanLine(y));
    for (int x = 0; x < img.width(); ++x) {
      int d = int(rng.bounded(7u)) - 3;
      QRgb c = line[x];
      line[x] = qRgb(qBound(0, qRed(c) + d, 255), qBound(0, qGreen(c) + d, 255),
                     qBound(0, qBlue(c) + d, 255));
    }
  }
  return img.save(path, "PNG");
}

bool WriteSecondPicture(const QString& path) {
  QImage img(900, 900, QImage::Format_RGB32);
  img.fill(QColor(0xf4, 0xef, 0xe6));
  QPainter p(&img);
  p.setRenderHint(QPainter::Antialiasing);
  const QColor colors[] = {QColor(0xe5, 0x48, 0x3d), QColor(0x3d, 0x8b, 0xf2),
                           QColor(0xf0, 0xa0, 0x30), QColor(0x4c, 0xaf, 0x50)};
  for (int i = 0; i < 4; ++i) {
    p.setBrush(colors[i]);
    p.setPen(Qt::NoPen);
    p.drawEllipse(QPointF(250 + (i % 2) * 400, 250 + (i / 2) * 400), 170, 170);
  }
  p.end();
  return img.save(path, "PNG");
}

// The reference server is not in the library the app links (it carries the
// transfer core only), so the demo runs the `chatxfer serve` command that
// CMake built as a child process. Its "serving on HOST:PORT" line on stderr
// gives the port; SIGINT stops it gracefully.
class ServeProcess {
 public:
  ~ServeProcess() { Stop(); }

  // Starts the server storing into `dir`; false (with a message on stderr)
  // if it does not start or announce its address.
  bool Start(const QString& dir) {
    proc_.setProgram(QStringLiteral(CHATXFER_COMMAND_PATH));
    proc_.setArguments({"serve", "--listen", "127.0.0.1:0", "--dir", dir});
    // waitForReadyRead watches the read channel: the line is on stderr.
    proc_.setReadChannel(QProcess::StandardError);
    proc_.start();
    if (!proc_.waitForStarted(10000)) {
      std::fprintf(stderr, "cannot run %s: %s\n", CHATXFER_COMMAND_PATH,
                   qPrintable(proc_.errorString()));
      return false;
    }
    QByteArray seen;
    while (true) {
      int at = seen.indexOf("serving on ");
      int end = at < 0 ? -1 : seen.indexOf(' ', at + 11);
      if (end > 0) {
        QByteArray addr = seen.mid(at + 11, end - at - 11);
        port_ = static_cast<std::uint16_t>(addr.mid(addr.lastIndexOf(':') + 1).toUInt());
        break;
      }
      if (!proc_.waitForReadyRead(10000)) {
        std::fprintf(stderr, "chatxfer serve did not start: %s\n", seen.constData());
        return false;
      }
      seen += proc_.readAllStandardError();
    }
    // Keep draining so the server never blocks on a full pipe.
    QObject::connect(&proc_, &QProcess::readyReadStandardError,
                     [this] { proc_.readAllStandardError(); });
    return port_ != 0;
  }

  std::uint16_t Port() const { return port_; }

  void Stop() {
    if (proc_.state() == QProcess::NotRunning) return;
    ::kill(static_cast<pid_t>(proc_.processId()), SIGINT);
    if (!proc_.waitForFinished(10000)) proc_.kill();
  }

 private:
  QProcess proc_;
  std::uint16_t port_ = 0;
};

struct SelfTest {
  QString out;
  QTemporaryDir tmp;
  ServeProcess server;
  std::uint16_t port = 0;
  QString paused_name = "holiday.mp4";
  bool clicked = false, paused_seen = false, resumed = false, finished = false;
  // The download back: its transfer name, the picture it fetches, where.
  QString download = "incoming-sunset", download_of = "sunset.png", download_dir;
  bool uploads_done = false, download_paused = false, download_resumed = false,
       download_paused_seen = false;
  // Its first attempt fails (no folder yet); the failed bubble is clicked.
  qint64 download_failure = 0;
  bool download_refused = false, download_failed_shown = false, download_retried = false,
       download_retry_refused = false;
  // The adapter's signals, counted as they arrive (on the GUI thread or not).
  std::map<std::string, int> signals_seen;
  int signals_off_thread = 0;
  int exit_code = 1;
};

// Counts one signal of the adapter; it must arrive on the GUI thread.
void Seen(SelfTest& t, const char* signal) {
  ++t.signals_seen[signal];
  if (QThread::currentThread() != qApp->thread()) ++t.signals_off_thread;
}

int RunSelfTest(QApplication& app, const QString& out) {
  auto t = std::make_shared<SelfTest>();
  t->out = out;
  if (!t->tmp.isValid()) return 1;
  QString src = t->tmp.filePath("src"), store = t->tmp.filePath("store");
  QDir().mkpath(src);
  QDir().mkpath(store);
  // A file where the downloads folder should be: the download into it
  // fails (the library cannot make the folder) until the retry.
  t->download_dir = t->tmp.filePath("downloads");
  QFile blocker(t->download_dir);
  if (!blocker.open(QIODevice::WriteOnly)) return 1;
  blocker.close();
  // Pictures made with QImage, and multi-MB binaries.
  bool ok = WritePicture(src + "/sunset.png") && WriteSecondPicture(src + "/dots.png") &&
            WriteRandom(src + "/holiday.mp4", 48 << 20, 1) &&
            WriteRandom(src + "/project.zip", 9 << 20, 2) &&
            WriteRandom(src + "/report.pdf", 700 << 10, 3);
  if (!ok) {
    std::fprintf(stderr, "selftest: cannot write the test files\n");
    return 1;
  }
  if (!t->server.Start(store)) return 1;
  t->port = t->server.Port();
  // Which Qt the demo was built against (the tests build it with 5 and 6).
  std::printf("selftest: built with Qt %s, running Qt %s\n", QT_VERSION_STR, qVersion());

  ChatWindow w;
  chatxfer::QtTransfers xfer;
  w.SetTransfers(&xfer);
  w.show();

  // The self-test's own slots, connected after the window's (so a bubble
  // has its new state when they run).
  using X = chatxfer::QtTransfers;
  QObject::connect(&xfer, &X::progress, &w, [t](const QString&, qint64, qint64, double) {
    Seen(*t, "progress");
  });
  QObject::connect(&xfer, &X::saved, &w, [t](const QString&, const QString&) { Seen(*t, "saved"); });
  QObject::connect(&xfer, &X::completed, &w, [t](const QString&, const QString&, qint64) {
    Seen(*t, "completed");
  });
  QObject::connect(&xfer, &X::connectionChanged, &w, [t](bool up, const QString&, qint64) {
    Seen(*t, up ? "connectionChanged(up)" : "connectionChanged(down)");
  });

  if (!xfer.connectToServer("127.0.0.1", t->port)) return 1;

  w.AddText("Hi! Could you send me the photos and the project files from the trip?", false);
  std::vector<QString> files = {src + "/sunset.png", src + "/holiday.mp4", src + "/project.zip",
                                src + "/dots.png", src + "/report.pdf"};
  std::map<QString, QString> sources;
  for (const QString& f : files) sources[QFileInfo(f).fileName()] = f;

  auto click = [&w](const QString& name) {
    Bubble* b = w.Find(name);
    // Integer coordinates: Qt 5's mapToGlobal takes a QPoint only.
    QPoint pos(b->width() / 2, b->height() / 2);
    QPointF global = b->mapToGlobal(pos);
    QMouseEvent press(QEvent::MouseButtonPress, pos, global, Qt::LeftButton, Qt::LeftButton,
                      Qt::NoModifier);
    QMouseEvent release(QEvent::MouseButtonRelease, pos, global, Qt::LeftButton, Qt::NoButton,
                        Qt::NoModifier);
    QApplication::sendEvent(b, &press);
    QApplication::sendEvent(b, &release);
  };

  // Pause the big one by clicking its bubble once it is under way; while it
  // is paused grab OUT-during.png; then click again to resume.
  // (On loopback a file is done within a few progress events, so the click
  // comes as soon as it starts sending.)
  // The download, once retried: pause it by a click at its first progress,
  // grab OUT-download.png showing the percentage, click again to resume.
  // (Its first event, like the upload's, so that it is caught under way.)
  auto pause_download = [&, t] {
    if (t->download_paused || !t->download_retried) return;
    t->download_paused = true;
    click(t->download);
    QTimer::singleShot(400, &w, [&, t] {
      QString during = t->out;
      during.replace(QRegularExpression("\\.png$"), "") += "-download.png";
      Bubble* b = w.Find(t->download);
      t->download_paused_seen = b && b->phase() == Bubble::Phase::Paused;
      w.grab().save(during, "PNG");
      std::printf("selftest: download of %s %s, window grabbed into %s\n",
                  qPrintable(t->download_of),
                  t->download_paused_seen ? "paused" : "not paused (already done)",
                  qPrintable(during));
      t->download_resumed = true;
      click(t->download);
    });
  };
  QObject::connect(&xfer, &X::progress, &w, [&, t](const QString& name, qint64 done, qint64 total) {
    if (name == t->download && done < total) pause_download();
  });
  QObject::connect(&xfer, &X::stateChanged, &w, [&, t](const QString& name, X::State s) {
    Seen(*t, "stateChanged");
    if (name == t->download && s == X::Sending) pause_download();
    if (name != t->paused_name || t->paused_seen) return;
    if (s == X::Sending && !t->clicked) {
      t->clicked = true;
      click(name);
      return;
    }
    if (s != X::Paused || !t->clicked) return;
    t->paused_seen = true;
    QTimer::singleShot(600, &w, [&, t] {
      QString during = t->out;
      during.replace(QRegularExpression("\\.png$"), "") += "-during.png";
      w.grab().save(during, "PNG");
      std::printf("selftest: paused %s, window grabbed into %s\n", qPrintable(t->paused_name),
                  qPrintable(during));
      t->resumed = true;
      click(t->paused_name);
    });
  });
  // The download's first failure: its bubble shows it (OUT-failed.png); the
  // file in the way becomes the folder and the bubble is clicked to retry.
  QObject::connect(&xfer, &X::failed, &w, [&, t](const QString& name, qint64 code, const QString&) {
    Seen(*t, "failed");
    if (name != t->download || t->download_retried) return;
    t->download_failure = code;
    Bubble* b = w.Find(name);
    t->download_failed_shown = b && b->phase() == Bubble::Phase::Failed;
    QTimer::singleShot(300, &w, [&, t] {
      QString failed = t->out;
      failed.replace(QRegularExpression("\\.png$"), "") += "-failed.png";
      w.grab().save(failed, "PNG");
      QFile::remove(t->download_dir);
      QDir().mkpath(t->download_dir);
      t->download_retried = true;
      click(t->download);
      Bubble* again = w.Find(t->download);
      t->download_retry_refused = !again || again->phase() == Bubble::Phase::Failed;
      std::printf("selftest: download of %s failed (code %lld), window grabbed into %s; "
                  "bubble clicked to retry: %s\n",
                  qPrintable(t->download_of), (long long)t->download_failure, qPrintable(failed),
                  t->download_retry_refused ? "REFUSED" : "retrying");
      if (t->download_retry_refused && w.onFinished) w.onFinished();
    });
  });
  w.onFinished = [&, t] {
    if (t->finished) return;
    if (!t->uploads_done) {
      if (w.completed().size() + w.failed().size() < sources.size()) return;
      // Every upload ended: Alice sends a picture back (the same file, by
      // its message id), downloaded into an incoming bubble.
      t->uploads_done = true;
      w.AddText("Nice! Here is the one I edited:", false);
      w.AddIncomingPicture(t->download, w.MessageId(t->download_of), t->download_dir);
      // Refused at once: nothing to retry (this ends the test, failed).
      t->download_refused = w.failed().count(t->download) > 0;
      return;
    }
    if (!w.completed().count(t->download)) {
      if (!w.failed().count(t->download)) return;
      // Its first failure: the failed slot above retries it.
      if (!t->download_retried && !t->download_refused) return;
    }
    t->finished = true;
    // Let the last repaint happen before the grab.
    QTimer::singleShot(300, &w, [&, t] {
      int bad = 0;
      for (const auto& s : sources) {
        QString stored = store + "/" + QString::number(kSelf) + "/" + s.first;
        QByteArray want = Md5Of(s.second), got = Md5Of(stored);
        bool same = !want.isEmpty() && want == got && w.completed().count(s.first) &&
                    w.completed().at(s.first).toLatin1() == want;
        std::printf("selftest: %-12s %9lld bytes  md5 %s  %s\n", qPrintable(s.first),
                    QFileInfo(s.second).size(), want.constData(), same ? "identical" : "DIFFERENT");
        if (!same) ++bad;
      }
      {
        QString want = sources[t->download_of];
        QString got = w.saved().count(t->download) ? w.saved().at(t->download) : QString();
        QFile a(want), b(got);
        bool same = !got.isEmpty() && w.completed().count(t->download) &&
                    a.open(QIODevice::ReadOnly) && b.open(QIODevice::ReadOnly) &&
                    a.readAll() == b.readAll() &&
                    QFileInfo(got).absolutePath() == QDir(t->download_dir).absolutePath();
        std::printf("selftest: downloaded %s (message %lld) into %s  %s\n",
                    qPrintable(t->download_of), (long long)w.MessageId(t->download_of),
                    qPrintable(got), same ? "byte-identical" : "DIFFERENT or MISSING");
        if (!same) ++bad;
        if (!t->download_paused_seen || !t->download_resumed)
          std::printf("selftest: note: the download ended before it could be paused\n");
      }
      // The failure to make the folder is the library's local one
      // (chatxfer::Failure::Local), shown by the bubble and retried by a click.
      bool retry_ok = t->download_failure == static_cast<qint64>(chatxfer::Failure::Local) &&
                      t->download_failed_shown && t->download_retried &&
                      !t->download_retry_refused && w.completed().count(t->download);
      std::printf("selftest: failed download shown and retried by a click: %s\n",
                  retry_ok ? "yes" : "NO");
      if (!retry_ok) ++bad;
      if (!t->paused_seen || !t->resumed) {
        std::printf("selftest: %s was not paused and resumed\n", qPrintable(t->paused_name));
        ++bad;
      }
      // Every kind of signal this run must cause arrived, and all of them
      // on the GUI thread (as every window slot also checks).
      QString counts;
      for (const char* s : {"progress", "stateChanged", "completed", "failed", "saved",
                            "connectionChanged(up)"}) {
        int n = t->signals_seen[s];
        counts += QString(" %1 %2").arg(s).arg(n);
        if (n == 0) ++bad;
      }
      std::printf("selftest: signals:%s; off the GUI thread: %d\n", qPrintable(counts),
                  t->signals_off_thread);
      if (t->signals_seen["completed"] != int(sources.size()) + 1) ++bad;
      if (t->signals_off_thread != 0) ++bad;
      if (w.off_thread_calls() != 0) {
        std::printf("selftest: %d events reached widgets off the GUI thread\n", w.off_thread_calls());
        ++bad;
      }
      bool saved = w.grab().save(t->out, "PNG");
      std::printf("selftest: window grabbed into %s%s\n", qPrintable(t->out), saved ? "" : " FAILED");
      t->exit_code = (bad == 0 && saved) ? 0 : 1;
      QApplication::exit(t->exit_code);
    });
  };

  // Register every file first (computing md5s takes a moment), then start
  // them all: the GUI thread is then free to click while they upload.
  for (const QString& f : files) w.AddFile(f, /*send=*/false);
  for (const QString& f : files) w.Send(QFileInfo(f).fileName());
  QTimer::singleShot(120000, &w, [] {
    std::fprintf(stderr, "selftest: timed out\n");
    QApplication::exit(1);
  });
  int rc = app.exec();
  // Drains and stops the signals; events already posted go with xfer.
  xfer.shutdown();
  t->server.Stop();
  return rc == 0 ? t->exit_code : rc;
}

}  // namespace

int main(int argc, char** argv) {
  QApplication app(argc, argv);
  QStringList args = app.arguments();
  int rc;
  if (args.size() >= 3 && args[1] == "--selftest") {
    rc = RunSelfTest(app, args[2]);
  } else {
    QString server;
    QStringList files;
    for (int i = 1; i < args.size(); ++i) {
      if (args[i] == "--server" && i + 1 < args.size()) server = args[++i];
      else files << args[i];
    }
    std::uint16_t port = 0;
    QString host = "127.0.0.1";
    QTemporaryDir store;
    ServeProcess serve;
    if (server.isEmpty()) {
      if (!serve.Start(store.path())) return 1;
      port = serve.Port();
      std::printf("chatxfer serve on port %u storing into %s\n", port, qPrintable(store.path()));
    } else {
      host = server.section(':', 0, -2);
      port = static_cast<std::uint16_t>(server.section(':', -1).toUInt());
    }
    ChatWindow w;
    chatxfer::QtTransfers xfer;
    w.SetTransfers(&xfer);
    if (!xfer.connectToServer(host, port))
      std::fprintf(stderr, "connect: %s\n", qPrintable(xfer.errorString()));
    w.show();
    for (const QString& f : files) w.AddFile(f);
    rc = app.exec();
    xfer.shutdown();
  }
  chatxfer::ShutdownLibrary();
  return rc;
}
