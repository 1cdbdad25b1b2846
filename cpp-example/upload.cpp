// upload: the C++ API end to end.
//
//   upload [--server HOST:PORT] [--chatxfer PATH] [--uid N] [--pause-first]
//          [--appending] [--state-dir DIR [--resume]] [--rate-limit B/S]
//          [--sans-io [--download-to DIR]] [--download-to DIR --fetch MSGID]... FILE...
//
// Uploads every FILE at once, printing a progress line per file as events
// arrive, and exits 0 only if every file completed. Without --server it
// starts `chatxfer serve` (PATH, default: the one CMake built) on a free
// loopback port with a temporary directory, and afterwards checks that each
// stored copy <dir>/<uid>/<name> has the size of its source.
// --pause-first pauses the first file at its first progress event and
// resumes it 200 ms later (exercises Pause/Resume). --sans-io drives the
// TransferEngine over a socket this program owns (poll loop) instead of the
// library's own connection; with --download-to it then downloads each file
// back (by its message id) into DIR through the same engine and socket and
// prints "NAME: saved PATH". --state-dir DIR keeps journals of unfinished
// transfers; a later run with --resume (FILE optional) continues what a
// killed run left. --appending: the server appends (`serve --appending`, as
// the deployed one). --rate-limit caps the upload rate (bytes/s).
// --fetch MSGID (with --download-to DIR, networked client): also downloads
// chat message MSGID's file into DIR as transfer "msg-MSGID" (journaled
// with --state-dir like the uploads; FILE is optional then).
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "chatxfer.hpp"

extern char** environ;

#ifndef CHATXFER_COMMAND_PATH
#define CHATXFER_COMMAND_PATH "chatxfer"
#endif

namespace {

// What the sink hands to the main thread. The sink runs on the library's
// event thread; it only queues, the main thread does the printing and logic
// (the same split a Qt app makes with a queued connection).
struct Note {
  enum Kind { Progress, State, Done, Failed, Conn, Saved };
  Note() = default;
  Note(Kind k, std::string n) : kind(k), name(std::move(n)) {}
  Kind kind = Progress;
  std::string name;
  std::uint64_t acked = 0, total = 0;
  double rate = 0;
  chatxfer::State state{};
  std::string text;
  std::int64_t code = 0;
};

class Inbox {
 public:
  void Push(Note n) {
    {
      std::lock_guard<std::mutex> g(mu_);
      q_.push_back(std::move(n));
    }
    cv_.notify_one();
  }
  bool Pop(Note& out, std::chrono::milliseconds wait) {
    std::unique_lock<std::mutex> g(mu_);
    if (!cv_.wait_for(g, wait, [&] { return !q_.empty(); })) return false;
    out = std::move(q_.front());
    q_.pop_front();
    return true;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Note> q_;
};

class Sink : public chatxfer::EventSink {
 public:
  explicit Sink(std::shared_ptr<Inbox> inbox) : inbox_(std::move(inbox)) {}
  void OnProgress(const std::string& name, std::uint64_t acked, std::uint64_t total,
                  double rate) override {
    Note n{Note::Progress, name};
    n.acked = acked, n.total = total, n.rate = rate;
    inbox_->Push(std::move(n));
  }
  void OnStateChanged(const std::string& name, chatxfer::State state) override {
    Note n{Note::State, name};
    n.state = state;
    inbox_->Push(std::move(n));
  }
  void OnCompleted(const std::string& name, const std::string& md5,
                   std::uint64_t bytes) override {
    Note n{Note::Done, name};
    n.text = md5, n.total = bytes;
    inbox_->Push(std::move(n));
  }
  void OnSaved(const std::string& name, const std::string& path) override {
    Note n{Note::Saved, name};
    n.text = path;
    inbox_->Push(std::move(n));
  }
  void OnFailed(const std::string& name, std::int64_t code, const std::string& message) override {
    Note n{Note::Failed, name};
    n.code = code, n.text = message;
    inbox_->Push(std::move(n));
  }
  void OnConnection(bool up, const std::string& detail, std::int64_t retry_in_ms) override {
    Note n{Note::Conn, ""};
    n.code = up ? 1 : 0, n.text = detail;
    if (!up && retry_in_ms >= 0) n.text += ", retry in " + std::to_string(retry_in_ms) + " ms";
    inbox_->Push(std::move(n));
  }

 private:
  std::shared_ptr<Inbox> inbox_;
};

const char* StateName(chatxfer::State s) {
  switch (s) {
    case chatxfer::State::Queued: return "queued";
    case chatxfer::State::Sending: return "sending";
    case chatxfer::State::Paused: return "paused";
    case chatxfer::State::Completed: return "completed";
    case chatxfer::State::Failed: return "failed";
    case chatxfer::State::Cancelled: return "cancelled";
  }
  return "?";
}

std::string BaseName(const std::string& path) {
  auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

long long FileSize(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 ? static_cast<long long>(st.st_size) : -1;
}

// `chatxfer serve` as a child process; its "serving on HOST:PORT" line on
// stderr gives the port, the rest of its stderr is passed through.
struct Server {
  pid_t pid = -1;
  std::string addr;
  std::string dir;
  std::thread drain;

  bool Start(const std::string& exe) {
    char tmpl[] = "/tmp/chatxfer-upload-XXXXXX";
    if (!mkdtemp(tmpl)) return false;
    dir = tmpl;
    int fds[2];
    if (pipe(fds) != 0) return false;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
    posix_spawn_file_actions_addclose(&fa, fds[0]);
    std::vector<std::string> args = {exe, "serve", "--listen", "127.0.0.1:0", "--dir", dir};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(&a[0]);
    argv.push_back(nullptr);
    int rc = posix_spawn(&pid, exe.c_str(), &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    if (rc != 0) {
      std::fprintf(stderr, "upload: cannot start %s: %s\n", exe.c_str(), std::strerror(rc));
      close(fds[0]);
      pid = -1;
      return false;
    }
    FILE* err = fdopen(fds[0], "r");
    char line[512];
    while (std::fgets(line, sizeof line, err)) {
      const char* key = "serving on ";
      if (const char* p = std::strstr(line, key)) {
        std::string rest(p + std::strlen(key));
        addr = rest.substr(0, rest.find(' '));
        break;
      }
      std::fputs(line, stderr);
    }
    drain = std::thread([err] {
      char buf[512];
      while (std::fgets(buf, sizeof buf, err)) std::fputs(buf, stderr);
      std::fclose(err);
    });
    return !addr.empty();
  }

  void Stop() {
    if (pid > 0) {
      kill(pid, SIGINT);  // `serve` stops gracefully on Ctrl-C
      int status = 0;
      waitpid(pid, &status, 0);
      pid = -1;
    }
    if (drain.joinable()) drain.join();
  }
};

// The library's log lines, as an app would route them to its own log:
// "log LEVEL target: message" on stdout (one fputs per line).
class LogPrinter : public chatxfer::LogSink {
 public:
  void OnLog(chatxfer::LogLevel level, const std::string& target,
             const std::string& message) override {
    std::string line = "log " + std::string(chatxfer::LogLevelName(level)) + " " + target +
                       ": " + message + "\n";
    std::fputs(line.c_str(), stdout);
  }
};

int Usage() {
  std::fprintf(stderr,
               "usage: upload [--server HOST:PORT] [--chatxfer PATH] [--uid N] "
               "[--pause-first] [--appending] [--state-dir DIR [--resume]] [--rate-limit B/S] "
               "[--sans-io [--download-to DIR]] [--download-to DIR --fetch MSGID]... FILE...\n");
  return 2;
}

}  // namespace

using Done = std::map<std::string, std::string>;  // name -> md5

// Whether registering and starting `what` went; says why not on stderr.
static bool Started(chatxfer::Status st, const std::string& what) {
  if (st == chatxfer::Status::Ok) return true;
  std::fprintf(stderr, "upload: %s: %s (%s)\n", what.c_str(),
               std::string(chatxfer::LastError()).c_str(),
               std::string(chatxfer::StatusName(st)).c_str());
  return false;
}

// The networked Client: the library owns the socket and its threads.
// What the command line asks of the networked client.
struct ClientFlags {
  bool pause_first = false;
  bool appending = false;       // the server appends (`serve --appending`, the deployed one)
  std::string state_dir;        // journals of unfinished uploads and downloads
  bool resume = false;          // continue what an earlier (killed) run left
  std::uint64_t rate_limit = 0;  // upload bytes/s
  std::string download_to;       // where --fetch downloads go
  std::vector<std::int64_t> fetch;  // message ids to download
};

static int RunClient(const std::string& host, std::uint16_t port,
                     const std::vector<std::string>& files, std::int64_t uid,
                     const ClientFlags& flags, Done& done) {
  const bool pause_first = flags.pause_first;
  int exit_code = 0;
  auto inbox = std::make_shared<Inbox>();
  // `chatxfer serve` writes chunks at their offset unless --appending; the
  // deployed server appends (the default).
  chatxfer::ClientOptions options = chatxfer::DefaultOptions();
  options.server_appends = flags.appending;
  options.give_up_after_ms = 120000;
  options.state_dir = flags.state_dir;
  options.rate_limit = flags.rate_limit;
  options.token = "tok";  // lets an appending server be asked what it holds
  auto client = chatxfer::NewClientWith(std::make_unique<Sink>(inbox), options);
  if (client->Connect(host, port) != chatxfer::Status::Ok) {
    std::fprintf(stderr, "upload: connect: %s\n", std::string(chatxfer::LastError()).c_str());
    return 1;
  }
  std::map<std::string, std::string> pending;  // name -> path
  if (flags.resume) {
    // What a killed earlier run left: resumed, each from where it was.
    for (const auto& r : client->ListResumable()) {
      std::string name(r.name), path(r.path);
      std::printf("%s: resumable %s, %llu of %llu bytes done\n", name.c_str(),
                  r.download ? "download" : "upload", static_cast<unsigned long long>(r.done),
                  static_cast<unsigned long long>(r.total));
      auto st = client->ResumeOffered(name);
      std::printf("%s: resume -> %s\n", name.c_str(), std::string(chatxfer::StatusName(st)).c_str());
      if (st == chatxfer::Status::Ok) pending[name] = path;
      else exit_code = 1;
    }
  }
  std::int64_t message_id = 1;
  for (const auto& path : files) {
    std::string name = BaseName(path);
    // As the Qt client: register held, start once the message is confirmed.
    // The spec form; `hold` keeps it registered until BatchSend, as the chat
    // client does until the ChatServer confirms the message.
    chatxfer::UploadSpec spec{};
    spec.path = path;
    spec.name = name;
    spec.uid = uid;
    spec.sender = uid;
    spec.receiver = 2002;
    spec.message_id = message_id++;
    spec.hold = true;
    auto st = client->AddTransFile(spec);
    if (st == chatxfer::Status::Ok) st = client->BatchSend(name);
    if (!Started(st, path)) {
      exit_code = 1;
      continue;
    }
    pending[name] = path;
  }

  for (std::int64_t id : flags.fetch) {
    const std::string name = "msg-" + std::to_string(id);
    auto st = chatxfer::AddDownloadFile(*client, name, id, uid, "tok", flags.download_to, "", 0);
    if (st == chatxfer::Status::Ok) st = client->StartDownload(name);
    if (!Started(st, "download " + name)) {
      exit_code = 1;
      continue;
    }
    pending[name] = flags.download_to;
  }

  std::string first = files.empty() ? std::string() : BaseName(files[0]);
  bool paused_once = false;
  auto resume_at = std::chrono::steady_clock::time_point::max();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(5);
  while (!pending.empty() && std::chrono::steady_clock::now() < deadline) {
    if (std::chrono::steady_clock::now() >= resume_at) {
      resume_at = std::chrono::steady_clock::time_point::max();
      std::printf("%s: resume -> %s\n", first.c_str(),
                  std::string(chatxfer::StatusName(client->Resume(first))).c_str());
    }
    Note n;
    if (!inbox->Pop(n, std::chrono::milliseconds(50))) continue;
    switch (n.kind) {
      case Note::Progress:
        std::printf("%s: %llu/%llu bytes %5.1f%% %.1f MB/s\n", n.name.c_str(),
                    static_cast<unsigned long long>(n.acked),
                    static_cast<unsigned long long>(n.total),
                    n.total ? 100.0 * n.acked / n.total : 100.0, n.rate / 1e6);
        if (pause_first && !paused_once && n.name == first && n.acked < n.total) {
          paused_once = true;
          std::printf("%s: pause -> %s\n", first.c_str(),
                      std::string(chatxfer::StatusName(client->Pause(first))).c_str());
          resume_at = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
        }
        break;
      case Note::State:
        std::printf("%s: %s\n", n.name.c_str(), StateName(n.state));
        break;
      case Note::Done:
        std::printf("%s: completed, %llu bytes, md5 %s\n", n.name.c_str(),
                    static_cast<unsigned long long>(n.total), n.text.c_str());
        done[n.name] = n.text;
        pending.erase(n.name);
        break;
      case Note::Failed:
        std::printf("%s: FAILED (%lld) %s\n", n.name.c_str(), static_cast<long long>(n.code),
                    n.text.c_str());
        pending.erase(n.name);
        exit_code = 1;
        break;
      case Note::Conn:
        std::printf("connection %s: %s\n", n.code ? "up" : "down", n.text.c_str());
        break;
      case Note::Saved:
        std::printf("%s: saved %s\n", n.name.c_str(), n.text.c_str());
        break;
    }
    std::fflush(stdout);
  }
  for (const auto& p : pending) {
    std::printf("%s: timed out\n", p.first.c_str());
    exit_code = 1;
  }
  if (pause_first && !paused_once) {
    std::printf("%s: was never paused (finished before its first progress)\n", first.c_str());
  }
  if (client->Shutdown() != chatxfer::Status::Ok) exit_code = 1;
  // A second shutdown is refused, not undefined.
  if (client->Shutdown() != chatxfer::Status::ShutDown) exit_code = 1;
  return exit_code;
}

// The sans-IO TransferEngine: this program owns the socket and the timer,
// the way FileTcpMgr owns its QTcpSocket.
static int RunSansIo(const std::string& host, std::uint16_t port,
                     const std::vector<std::string>& files, std::int64_t uid, Done& done,
                     const std::string& download_to) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* ai = nullptr;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &ai) != 0 || !ai) {
    std::fprintf(stderr, "upload: cannot resolve %s\n", host.c_str());
    return 1;
  }
  int fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
  bool connected = fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) == 0;
  freeaddrinfo(ai);
  if (!connected) {
    std::fprintf(stderr, "upload: connect: %s\n", std::strerror(errno));
    if (fd >= 0) close(fd);
    return 1;
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

  int exit_code = 0;
  auto engine = chatxfer::NewTransferEngine(/*server_appends=*/true);
  engine->Connected();
  std::map<std::string, bool> pending;
  std::int64_t message_id = 1;
  for (const auto& path : files) {
    std::string name = BaseName(path);
    // The positional form the Qt client uses (it builds the same spec).
    auto st = chatxfer::AddTransFile(*engine, path, name, uid, uid, 2002, message_id++, "", 0);
    if (st == chatxfer::Status::Ok) st = engine->BatchSend(name);
    if (st != chatxfer::Status::Ok) {
      std::fprintf(stderr, "upload: %s: %s\n", path.c_str(),
                   std::string(chatxfer::LastError()).c_str());
      exit_code = 1;
      continue;
    }
    pending[name] = true;
  }

  std::vector<std::uint8_t> out;  // bytes the engine gave and the socket has not taken
  std::vector<std::uint8_t> in(64 * 1024);
  bool downloading = false;  // `done` lists uploads only (main checks the store)
  // One poll loop for uploads and downloads: runs until `pending` is empty.
  auto drive = [&]() {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(5);
    while (!pending.empty() && std::chrono::steady_clock::now() < deadline) {
      auto frames = engine->PollTransmit(256 * 1024);
      out.insert(out.end(), frames.begin(), frames.end());
      long long wait = engine->NextTimeoutMs();
      pollfd p{fd, static_cast<short>(POLLIN | (out.empty() ? 0 : POLLOUT)), 0};
      int ready = poll(&p, 1, wait < 0 || wait > 1000 ? 1000 : static_cast<int>(wait));
      if (ready < 0 && errno != EINTR) break;
      if (p.revents & POLLOUT) {
        ssize_t n = write(fd, out.data(), out.size());
        if (n > 0) out.erase(out.begin(), out.begin() + n);
      }
      if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
        ssize_t n = read(fd, in.data(), in.size());
        if (n <= 0 && !(n < 0 && (errno == EAGAIN || errno == EINTR))) {
          std::fprintf(stderr, "upload: the server closed the connection\n");
          engine->ConnectionLost();
          exit_code = 1;
          break;
        }
        if (n > 0 &&
            engine->HandleBytes(rust::Slice<const std::uint8_t>(in.data(), static_cast<std::size_t>(n))) !=
                chatxfer::Status::Ok) {
          std::fprintf(stderr, "upload: %s\n", std::string(chatxfer::LastError()).c_str());
          exit_code = 1;
          break;
        }
      }
      if (engine->NextTimeoutMs() == 0) engine->HandleTimeout();
      for (const auto& e : engine->PollEvents()) {
        std::string name(e.name);
        switch (e.kind) {
          case chatxfer::EventKind::Progress:
            std::printf("%s: %llu/%llu bytes %5.1f%% %.1f MB/s\n", name.c_str(),
                        static_cast<unsigned long long>(e.acked),
                        static_cast<unsigned long long>(e.total),
                        e.total ? 100.0 * e.acked / e.total : 100.0, e.rate / 1e6);
            break;
          case chatxfer::EventKind::Completed:
            std::printf("%s: completed, %llu bytes, md5 %s\n", name.c_str(),
                        static_cast<unsigned long long>(e.total), std::string(e.md5).c_str());
            if (!downloading) done[name] = std::string(e.md5);
            pending.erase(name);
            break;
          case chatxfer::EventKind::Saved:
            std::printf("%s: saved %s\n", name.c_str(), std::string(e.path).c_str());
            break;
          case chatxfer::EventKind::Failed:
            std::printf("%s: FAILED (%lld) %s\n", name.c_str(), static_cast<long long>(e.code),
                        std::string(e.message).c_str());
            pending.erase(name);
            exit_code = 1;
            break;
          default:
            break;
        }
      }
      std::fflush(stdout);
    }
    for (const auto& p : pending) {
      std::printf("%s: timed out\n", p.first.c_str());
      exit_code = 1;
    }
    pending.clear();
  };
  drive();

  // Downloads back through the same engine and socket: message ids were
  // given in file order from 1; each is held until StartDownload.
  if (exit_code == 0 && !download_to.empty()) {
    downloading = true;
    std::int64_t id = 1;
    for (const auto& path : files) {
      std::string name = "dl-" + BaseName(path);
      auto st = chatxfer::AddDownloadFile(*engine, name, id++, 2002, "", download_to, "", 0);
      if (st == chatxfer::Status::Ok) st = engine->StartDownload(name);
      if (st != chatxfer::Status::Ok) {
        std::fprintf(stderr, "upload: download %s: %s\n", name.c_str(),
                     std::string(chatxfer::LastError()).c_str());
        exit_code = 1;
        continue;
      }
      pending[name] = true;
    }
    drive();
  }
  close(fd);
  return exit_code;
}

int main(int argc, char** argv) {
  std::string server_arg, exe = CHATXFER_COMMAND_PATH;
  std::int64_t uid = 1001;
  bool sans_io = false;
  ClientFlags flags;
  std::string download_to;
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--server" && i + 1 < argc) server_arg = argv[++i];
    else if (a == "--chatxfer" && i + 1 < argc) exe = argv[++i];
    else if (a == "--uid" && i + 1 < argc) uid = std::atoll(argv[++i]);
    else if (a == "--pause-first") flags.pause_first = true;
    else if (a == "--appending") flags.appending = true;
    else if (a == "--state-dir" && i + 1 < argc) flags.state_dir = argv[++i];
    else if (a == "--resume") flags.resume = true;
    else if (a == "--rate-limit" && i + 1 < argc) flags.rate_limit = std::strtoull(argv[++i], nullptr, 10);
    else if (a == "--sans-io") sans_io = true;
    else if (a == "--download-to" && i + 1 < argc) download_to = argv[++i];
    else if (a == "--fetch" && i + 1 < argc) flags.fetch.push_back(std::atoll(argv[++i]));
    else if (a.rfind("--", 0) == 0) return Usage();
    else files.push_back(a);
  }
  if (chatxfer::SetLogSink(std::make_unique<LogPrinter>(), chatxfer::LogLevel::Info) !=
      chatxfer::Status::Ok) {
    std::fprintf(stderr, "upload: SetLogSink: %s\n", std::string(chatxfer::LastError()).c_str());
    return 1;
  }
  if (files.empty() && !flags.resume && flags.fetch.empty()) return Usage();
  if (!flags.fetch.empty() && (download_to.empty() || sans_io)) return Usage();
  flags.download_to = download_to;

  Server server;
  std::string addr = server_arg;
  if (addr.empty()) {
    if (!server.Start(exe)) {
      std::fprintf(stderr, "upload: could not start `%s serve`\n", exe.c_str());
      server.Stop();
      return 1;
    }
    addr = server.addr;
    std::printf("started chatxfer serve on %s (dir %s)\n", addr.c_str(), server.dir.c_str());
  }
  auto colon = addr.rfind(':');
  if (colon == std::string::npos) return Usage();
  std::string host = addr.substr(0, colon);
  auto port = static_cast<std::uint16_t>(std::atoi(addr.c_str() + colon + 1));

  Done done;
  if (!download_to.empty() && !sans_io && flags.fetch.empty()) return Usage();
  int exit_code = sans_io ? RunSansIo(host, port, files, uid, done, download_to)
                          : RunClient(host, port, files, uid, flags, done);

  // The embedded server: check what it stored.
  if (!server.dir.empty()) {
    for (const auto& d : done) {
      std::string stored = server.dir + "/" + std::to_string(uid) + "/" + d.first;
      std::string source;
      for (const auto& f : files)
        if (BaseName(f) == d.first) source = f;
      if (FileSize(stored) != FileSize(source)) {
        std::printf("%s: stored copy %s has %lld bytes, source %lld\n", d.first.c_str(),
                    stored.c_str(), FileSize(stored), FileSize(source));
        exit_code = 1;
      }
    }
  }
  server.Stop();
  // Joins the library's threads so nothing runs during exit.
  chatxfer::ShutdownLibrary();
  if (!server.dir.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(server.dir, ec);
  }
  std::printf("%s\n", exit_code == 0 ? "all files uploaded" : "upload FAILED");
  return exit_code;
}
