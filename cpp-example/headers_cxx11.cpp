// The public C++ headers as the llfcchat client compiles them (qmake
// CONFIG += c++11): built with -std=c++11 -Wall -Wextra -Werror -pedantic
// (cpp-example/CMakeLists.txt). The templates and inline helpers are
// instantiated so that their bodies are checked too, and the program runs a
// few calls so that a C++11 object links against the library.
#include "chatxfer.hpp"

#include <cstdio>
#include <memory>

namespace {

class Sink : public chatxfer::EventSink {
 public:
  void OnProgress(const std::string& name, std::uint64_t acked, std::uint64_t total,
                  double rate) override {
    (void)name, (void)acked, (void)total, (void)rate;
  }
};

}  // namespace

int main() {
  // std::make_unique is C++14.
  rust::Box<chatxfer::Client> client =
      chatxfer::NewClient(std::unique_ptr<chatxfer::EventSink>(new Sink()));
  chatxfer::Status add = chatxfer::AddTransFile(*client, "/nonexistent/chatxfer-cxx11", "a.bin",
                                                1, 1, 2, 3, "", 0);
  chatxfer::Status send =
      chatxfer::SendFile(*client, "", "b.bin", 1, 1, 2, 4, "", 0);
  chatxfer::Status down =
      chatxfer::AddDownloadFile(*client, "c.bin", 5, 1, "token", "/nonexistent", "", 0);
  chatxfer::Status avatar =
      chatxfer::AddAvatarDownload(*client, "d", "head_1.jpg", 1, "token", "/nonexistent", "p");
  // The templates' other forms, instantiated at C++11 too.
  (void)chatxfer::AddAvatarDownload(*client, "e", "head_2.jpg", 2, "token", "/nonexistent", "p",
                                    "other_icon");
  (void)chatxfer::BatchSend(*client, "nope", 5);
  client->Shutdown();
  std::printf("AddTransFile(missing file): %s\n", std::string(chatxfer::StatusName(add)).c_str());
  std::printf("SendFile(empty path): %s\n", std::string(chatxfer::StatusName(send)).c_str());
  std::printf("AddDownloadFile: %s\n", std::string(chatxfer::StatusName(down)).c_str());
  std::printf("AddAvatarDownload: %s\n", std::string(chatxfer::StatusName(avatar)).c_str());
  // A missing file and an empty path must be refused.
  bool ok = add != chatxfer::Status::Ok && send != chatxfer::Status::Ok;
  chatxfer::ShutdownLibrary();
  std::printf("%s\n", ok ? "c++11 headers: ok" : "c++11 headers: FAILED");
  return ok ? 0 : 1;
}
