// client_flow: the chat client's whole life through the C++ API, in the order
// the real client (llfcchat) meets it -- the README's mapping table, walked.
//
//   client_flow HOST PORT WORKDIR [--appending]
//
// Writes its source files under WORKDIR/src, downloads into WORKDIR/dl,
// keeps journals in WORKDIR/state, and talks to the ResourceServer at
// HOST:PORT:
//   1. ComputeMd5 of a photo (the md5 the 1035 announce carries), off the
//      caller's thread, with progress;
//   2. the photo registered at the send click with no message id (held),
//      refused by BatchSend until the 1036 reply's id arrives, then started
//      with it (chatxfer::BatchSend(client, name, id));
//   3. a video paused and resumed from the bubble's clicks;
//   4. a document that fails (its file shrank before sending), fixed, and
//      started over by the bubble's click on the failed transfer (Resume);
//   5. an avatar uploaded (1031) and downloaded (1033), routed back by the
//      client_path and req_type of its request (OnAvatarSaved);
//   6. a picture another user sent, downloaded with the name, size and
//      sender of the 1039 notify (no 1045);
//   7. a logout in the middle of a movie's upload: Disconnect, then prints
//      "LOGOUT", reads "PORT N" from stdin (the re-login's server), Connect
//      there, and the movie completes.
// Prints "saved NAME PATH" per download and "DONE" at the end; exits 0 only
// if every step did what it should. Byte-identity of the stored and
// downloaded copies, and that the server saw no 1045, are checked by the
// test that runs it (tools/tests/cpp.rs).
#include <sys/stat.h>
#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "chatxfer.hpp"

namespace {

// One event as the main thread sees it.
struct Ev {
  enum Kind { Progress, State, Saved, AvatarSaved, Completed, Failed, Up, Down, Md5Progress, Md5Ready };
  Kind kind = Progress;
  std::string name, path, md5, text, client_path, req_type;
  std::uint64_t acked = 0, total = 0;
  chatxfer::State state{};
  std::int64_t code = 0;
};

// Every event ever seen, in order; the main thread waits on it. The sink
// runs on the library's event thread and only appends (as a Qt app would
// post to its GUI thread).
class History {
 public:
  void Add(Ev e) {
    {
      std::lock_guard<std::mutex> g(mu_);
      all_.push_back(std::move(e));
    }
    cv_.notify_all();
  }
  std::size_t Size() {
    std::lock_guard<std::mutex> g(mu_);
    return all_.size();
  }
  // The first event at index >= from that `match` accepts; exits the
  // program with `what` after 120 s without one.
  Ev WaitFor(std::size_t from, const std::function<bool(const Ev&)>& match, const std::string& what) {
    std::unique_lock<std::mutex> g(mu_);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    for (std::size_t i = from;; ++i) {
      while (i >= all_.size()) {
        if (cv_.wait_until(g, deadline) == std::cv_status::timeout && i >= all_.size()) {
          std::printf("FAIL no event: %s\n", what.c_str());
          std::exit(1);
        }
      }
      const Ev& e = all_[i];
      if (e.kind == Ev::Failed && match(e) == false && expect_no_failure_) {
        std::printf("FAIL %s failed (%lld): %s, while waiting for %s\n", e.name.c_str(),
                    static_cast<long long>(e.code), e.text.c_str(), what.c_str());
        std::exit(1);
      }
      if (match(e)) return e;
    }
  }
  // The first event at index >= from of `kind` for transfer `name`.
  Ev WaitFor(std::size_t from, Ev::Kind kind, const std::string& name, const std::string& what) {
    return WaitFor(from, [&](const Ev& e) { return e.kind == kind && e.name == name; }, what);
  }
  std::vector<Ev> Since(std::size_t from) {
    std::lock_guard<std::mutex> g(mu_);
    return std::vector<Ev>(all_.begin() + static_cast<std::ptrdiff_t>(from), all_.end());
  }
  void ExpectNoFailure(bool on) {
    std::lock_guard<std::mutex> g(mu_);
    expect_no_failure_ = on;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Ev> all_;
  bool expect_no_failure_ = true;
};

class Sink : public chatxfer::EventSink {
 public:
  explicit Sink(History& h) : h_(h) {}
  void OnProgress(const std::string& name, std::uint64_t acked, std::uint64_t total, double) override {
    Ev e;
    e.kind = Ev::Progress, e.name = name, e.acked = acked, e.total = total;
    h_.Add(e);
  }
  void OnStateChanged(const std::string& name, chatxfer::State state) override {
    Ev e;
    e.kind = Ev::State, e.name = name, e.state = state;
    h_.Add(e);
  }
  void OnSaved(const std::string& name, const std::string& path) override {
    Ev e;
    e.kind = Ev::Saved, e.name = name, e.path = path;
    h_.Add(e);
  }
  void OnAvatarSaved(const std::string& name, const std::string& path,
                     const std::string& client_path, const std::string& req_type) override {
    Ev e;
    e.kind = Ev::AvatarSaved, e.name = name, e.path = path, e.client_path = client_path;
    e.req_type = req_type;
    h_.Add(e);
  }
  void OnCompleted(const std::string& name, const std::string& md5, std::uint64_t bytes) override {
    Ev e;
    e.kind = Ev::Completed, e.name = name, e.md5 = md5, e.total = bytes;
    h_.Add(e);
  }
  void OnFailed(const std::string& name, std::int64_t code, const std::string& message) override {
    Ev e;
    e.kind = Ev::Failed, e.name = name, e.code = code, e.text = message;
    h_.Add(e);
  }
  void OnConnection(bool up, const std::string& detail, std::int64_t) override {
    Ev e;
    e.kind = up ? Ev::Up : Ev::Down, e.text = detail;
    h_.Add(e);
  }
  void OnMd5Progress(const std::string& path, std::uint64_t hashed, std::uint64_t total) override {
    Ev e;
    e.kind = Ev::Md5Progress, e.path = path, e.acked = hashed, e.total = total;
    h_.Add(e);
  }
  void OnMd5Ready(const std::string& path, const std::string& md5, const std::string& error) override {
    Ev e;
    e.kind = Ev::Md5Ready, e.path = path, e.md5 = md5, e.text = error;
    h_.Add(e);
  }

 private:
  History& h_;
};

void Check(bool ok, const std::string& what) {
  if (!ok) {
    std::printf("FAIL %s (last error: %s)\n", what.c_str(), std::string(chatxfer::LastError()).c_str());
    std::exit(1);
  }
}

void CheckStatus(chatxfer::Status got, chatxfer::Status want, const std::string& what) {
  Check(got == want, what + ": got " + std::string(chatxfer::StatusName(got)) + ", want " +
                         std::string(chatxfer::StatusName(want)));
}

// A file of `len` bytes with a pattern that differs per `seed`.
std::string WriteFile(const std::string& path, std::size_t len, unsigned seed) {
  std::string data(len, '\0');
  std::uint32_t x = 2463534242u + seed;
  for (auto& c : data) {
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    c = static_cast<char>(x);
  }
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(data.data(), static_cast<std::streamsize>(len));
  return data;
}

chatxfer::UploadSpec Chat(const std::string& path, const std::string& name, std::int64_t uid,
                          std::int64_t receiver, std::int64_t message_id) {
  return chatxfer::MakeUploadSpec(path, name, uid, uid, receiver, message_id, "", 0, /*hold=*/false);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: client_flow HOST PORT WORKDIR [--appending]\n");
    return 2;
  }
  const std::string host = argv[1];
  const int port = std::atoi(argv[2]);
  const std::string work = argv[3];
  const bool appending = argc > 4 && std::string(argv[4]) == "--appending";
  const std::string src = work + "/src", dl = work + "/dl", state = work + "/state";
  for (const auto& d : {src, dl, state}) mkdir(d.c_str(), 0700);
  const std::int64_t me = 1001, friend_uid = 2002;
  const std::string token = "tok-1001";

  History h;
  chatxfer::ClientOptions opts = chatxfer::DefaultOptions();
  opts.server_appends = appending;
  opts.state_dir = state;
  opts.token = token;
  // A phone link's pace: slow enough that clicks land mid-transfer.
  opts.rate_limit = 8000000;
  auto client = chatxfer::NewClientWith(std::unique_ptr<chatxfer::EventSink>(new Sink(h)), opts);
  CheckStatus(client->Connect(host, static_cast<std::uint16_t>(port)), chatxfer::Status::Ok, "Connect");
  h.WaitFor(0, [](const Ev& e) { return e.kind == Ev::Up; }, "connected");

  // 1. The md5 for the 1035 announce, computed off this (the GUI) thread.
  const std::string photo = src + "/photo.jpg";
  WriteFile(photo, 3000000, 1);
  std::size_t mark = h.Size();
  CheckStatus(client->ComputeMd5(photo), chatxfer::Status::Ok, "ComputeMd5");
  Ev md5 = h.WaitFor(mark, [&](const Ev& e) { return e.kind == Ev::Md5Ready && e.path == photo; }, "md5 of photo");
  Check(md5.md5.size() == 32 && md5.text.empty(), "md5 of photo: " + md5.md5 + " " + md5.text);
  bool finished_progress = false;
  for (const Ev& e : h.Since(mark))
    if (e.kind == Ev::Md5Progress && e.path == photo && e.acked == e.total && e.total == 3000000) finished_progress = true;
  Check(finished_progress, "md5 progress reached the file's size");

  // 2. Registered at the send click, before the 1035 announce: no id yet.
  chatxfer::UploadSpec at_send = Chat(photo, "photo.jpg", me, friend_uid, 0);
  at_send.md5 = md5.md5;
  at_send.hold = true;
  CheckStatus(client->AddTransFile(at_send), chatxfer::Status::Ok, "AddTransFile at send");
  CheckStatus(client->BatchSend("photo.jpg"), chatxfer::Status::InvalidArgument, "BatchSend before the id");
  chatxfer::FileInfo info;
  CheckStatus(client->GetStatus("photo.jpg", info), chatxfer::Status::Ok, "GetStatus photo");
  Check(info.state == chatxfer::State::Paused, "photo waits for its id");
  // ...the ChatServer's 1036 reply: message id 501.
  mark = h.Size();
  CheckStatus(chatxfer::BatchSend(*client, "photo.jpg", 501), chatxfer::Status::Ok, "BatchSend with the 1036 id");
  h.WaitFor(mark, Ev::Completed, "photo.jpg", "photo completed");

  // 3. Pause and resume from the bubble's clicks.
  const std::string video = src + "/video.mp4";
  WriteFile(video, 12000000, 2);
  mark = h.Size();
  CheckStatus(client->AddTransFile(Chat(video, "video.mp4", me, friend_uid, 502)), chatxfer::Status::Ok, "video");
  h.WaitFor(mark, [](const Ev& e) { return e.kind == Ev::Progress && e.name == "video.mp4" && e.acked > 0; },
            "video progress");
  CheckStatus(client->Pause("video.mp4"), chatxfer::Status::Ok, "Pause video");
  h.WaitFor(mark, [](const Ev& e) {
    return e.kind == Ev::State && e.name == "video.mp4" && e.state == chatxfer::State::Paused;
  }, "video paused");
  CheckStatus(client->GetStatus("video.mp4", info), chatxfer::Status::Ok, "GetStatus video");
  Check(info.state == chatxfer::State::Paused && info.acked < info.total, "video paused part-way");
  CheckStatus(client->Resume("video.mp4"), chatxfer::Status::Ok, "Resume video");
  h.WaitFor(mark, Ev::Completed, "video.mp4", "video completed");

  // 4. A failure, fixed, retried by the click on the failed bubble.
  const std::string doc = src + "/doc.pdf";
  const std::string doc_bytes = WriteFile(doc, 400000, 3);
  mark = h.Size();
  CheckStatus(client->ComputeMd5(doc), chatxfer::Status::Ok, "ComputeMd5 doc");
  md5 = h.WaitFor(mark, [&](const Ev& e) { return e.kind == Ev::Md5Ready && e.path == doc; }, "md5 of doc");
  chatxfer::UploadSpec doc_spec = Chat(doc, "doc.pdf", me, friend_uid, 503);
  doc_spec.md5 = md5.md5;
  doc_spec.hold = true;
  CheckStatus(client->AddTransFile(doc_spec), chatxfer::Status::Ok, "AddTransFile doc");
  std::ofstream(doc, std::ios::binary | std::ios::trunc).write(doc_bytes.data(), 1000);  // shrank
  h.ExpectNoFailure(false);
  mark = h.Size();
  CheckStatus(client->BatchSend("doc.pdf"), chatxfer::Status::Ok, "BatchSend doc");
  Ev failed = h.WaitFor(mark, Ev::Failed, "doc.pdf", "doc failed");
  Check(failed.code == static_cast<std::int64_t>(chatxfer::Failure::Source), "doc failed as Source: " + failed.text);
  h.ExpectNoFailure(true);
  std::ofstream(doc, std::ios::binary | std::ios::trunc).write(doc_bytes.data(), static_cast<std::streamsize>(doc_bytes.size()));
  mark = h.Size();
  CheckStatus(client->Resume("doc.pdf"), chatxfer::Status::Ok, "Resume (retry) doc");
  h.WaitFor(mark, Ev::Completed, "doc.pdf", "doc completed");

  // 5. An avatar up (1031) and down (1033), routed by its request.
  const std::string avatar = src + "/me.png";
  WriteFile(avatar, 60000, 4);
  chatxfer::UploadSpec up_avatar = Chat(avatar, "me.png", me, 0, 0);
  up_avatar.avatar = true;
  mark = h.Size();
  CheckStatus(client->AddTransFile(up_avatar), chatxfer::Status::Ok, "avatar upload");
  h.WaitFor(mark, Ev::Completed, "me.png", "avatar uploaded");
  mark = h.Size();
  // As LoadHeadIcon asks for it: a full client path and "self_icon".
  CheckStatus(chatxfer::AddAvatarDownload(*client, "self-icon", "me.png", me, token, dl,
                                          "/home/u/.llfcchat/self_icon.png", "self_icon"),
              chatxfer::Status::Ok, "avatar download");
  CheckStatus(client->StartDownload("self-icon"), chatxfer::Status::Ok, "StartDownload avatar");
  Ev routed = h.WaitFor(mark, Ev::AvatarSaved, "self-icon", "avatar saved");
  Check(routed.client_path == "/home/u/.llfcchat/self_icon.png" && routed.req_type == "self_icon",
        "avatar routed by its request: " + routed.client_path + " " + routed.req_type);
  std::printf("saved self-icon %s\n", routed.path.c_str());

  // 6. A picture from a friend: the 1039 notify gives name, size, sender.
  const std::string beach = src + "/beach.jpg";
  WriteFile(beach, 700000, 5);
  mark = h.Size();
  CheckStatus(client->AddTransFile(Chat(beach, "beach.jpg", friend_uid, me, 504)), chatxfer::Status::Ok, "beach");
  h.WaitFor(mark, Ev::Completed, "beach.jpg", "beach uploaded");
  chatxfer::DownloadSpec received{};
  received.name = "beach-received";
  received.message_id = 504;
  received.uid = me;
  received.token = token;
  received.dest_dir = dl;
  received.known_name = "beach.jpg";
  received.known_size = 700000;
  received.known_sender = friend_uid;
  mark = h.Size();
  CheckStatus(client->AddDownloadFile(received), chatxfer::Status::Ok, "received picture");
  CheckStatus(client->StartDownload("beach-received"), chatxfer::Status::Ok, "StartDownload picture");
  Ev saved = h.WaitFor(mark, Ev::Saved, "beach-received", "picture saved");
  std::printf("saved beach-received %s\n", saved.path.c_str());

  // 7. Logout in the middle of a movie, re-login to another server.
  const std::string movie = src + "/movie.mp4";
  WriteFile(movie, 12000000, 6);
  mark = h.Size();
  CheckStatus(client->AddTransFile(Chat(movie, "movie.mp4", me, friend_uid, 505)), chatxfer::Status::Ok, "movie");
  h.WaitFor(mark, [](const Ev& e) { return e.kind == Ev::Progress && e.name == "movie.mp4" && e.acked > 0; },
            "movie progress");
  mark = h.Size();
  CheckStatus(client->Disconnect(), chatxfer::Status::Ok, "Disconnect (logout)");
  h.WaitFor(mark, [](const Ev& e) { return e.kind == Ev::Down; }, "disconnected");
  CheckStatus(client->GetStatus("movie.mp4", info), chatxfer::Status::Ok, "GetStatus movie");
  Check(info.state != chatxfer::State::Completed && info.state != chatxfer::State::Failed,
        "the movie waits through the logout");
  std::printf("LOGOUT\n");
  std::fflush(stdout);
  std::string word;
  int new_port = 0;
  Check(static_cast<bool>(std::cin >> word >> new_port) && word == "PORT" && new_port > 0, "PORT N on stdin");
  mark = h.Size();
  CheckStatus(client->Connect(host, static_cast<std::uint16_t>(new_port)), chatxfer::Status::Ok, "Connect again");
  h.WaitFor(mark, [](const Ev& e) { return e.kind == Ev::Up; }, "connected again");
  h.WaitFor(mark, Ev::Completed, "movie.mp4", "movie completed");

  CheckStatus(client->ShutdownWithin(5000), chatxfer::Status::Ok, "Shutdown");
  std::printf("DONE\n");
  return 0;
}
