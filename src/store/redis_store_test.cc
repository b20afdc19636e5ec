// Tests of the Redis store against a real redis-server, started by the fixture as a child process on a
// free loopback port (no persistence) and killed in TearDown, and on the test process's death by
// PR_SET_PDEATHSIG. What the writer wrote is read back through a separate plain hiredis connection, the
// way any Redis client would see it.
#include "store/redis_store.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "common/time.h"

namespace freshet {
namespace {

constexpr char kRedisServer[] = "/usr/bin/redis-server";

// A free TCP port on 127.0.0.1 (the kernel's pick; it could be taken again before use, so starting the
// server retries with another port).
int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    if (fd >= 0) close(fd);
    return 0;
  }
  close(fd);
  return ntohs(addr.sin_port);
}

// One redis-server child process.
class RedisServerProcess {
 public:
  ~RedisServerProcess() { Kill(); }

  // Starts the server on `port` and waits until it answers PING. False if it exited or did not answer
  // within 10 s (the port may be taken).
  bool Start(int port, const std::vector<std::string>& extra_args = {}) {
    Kill();
    port_ = port;
    std::vector<std::string> args = {
        kRedisServer,   "--port", std::to_string(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no",     "--daemonize",        "no",     "--dir",     "/tmp",   "--loglevel",
        "warning"};
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    std::vector<char*> argv;
    for (std::string& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    const pid_t parent = getpid();
    pid_ = fork();
    if (pid_ < 0) return false;
    if (pid_ == 0) {
      // Child: die with the test process, keep quiet, become redis-server.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(1);
      int devnull = open("/dev/null", O_RDWR);
      if (devnull >= 0) {
        dup2(devnull, STDIN_FILENO);
        dup2(devnull, STDOUT_FILENO);
        dup2(devnull, STDERR_FILENO);
      }
      execv(kRedisServer, argv.data());
      _exit(127);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline) {
      int wstatus = 0;
      if (waitpid(pid_, &wstatus, WNOHANG) == pid_) {
        pid_ = -1;
        return false;
      }
      if (Pings(extra_args)) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    Kill();
    return false;
  }

  // Kills the server at once (like a crash) and reaps it.
  void Kill() {
    if (pid_ <= 0) return;
    kill(pid_, SIGCONT);  // In case it was paused.
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  void Pause() { kill(pid_, SIGSTOP); }
  void Resume() { kill(pid_, SIGCONT); }
  int port() const { return port_; }

 private:
  bool Pings(const std::vector<std::string>& extra_args) const {
    timeval tv{0, 200 * 1000};
    redisContext* c = redisConnectWithTimeout("127.0.0.1", port_, tv);
    bool ok = false;
    if (c != nullptr && c->err == 0) {
      // With --requirepass, an answer of NOAUTH also shows that the server is up.
      auto* reply = static_cast<redisReply*>(redisCommand(c, "PING"));
      ok = reply != nullptr &&
           (reply->type == REDIS_REPLY_STATUS || (reply->type == REDIS_REPLY_ERROR && !extra_args.empty()));
      if (reply != nullptr) freeReplyObject(reply);
    }
    if (c != nullptr) redisFree(c);
    return ok;
  }

  pid_t pid_ = -1;
  int port_ = 0;
};

// A plain hiredis client, as any Redis user would read the store.
class PlainClient {
 public:
  PlainClient(int port, int db = 0, const char* password = nullptr) {
    context_ = redisConnect("127.0.0.1", port);
    if (password != nullptr) Free(Command("AUTH %s", password));
    if (db != 0) Free(Command("SELECT %d", db));
  }
  ~PlainClient() {
    if (context_ != nullptr) redisFree(context_);
  }
  bool ok() const { return context_ != nullptr && context_->err == 0; }

  template <typename... Args>
  redisReply* Command(const char* format, Args... args) {
    return static_cast<redisReply*>(redisCommand(context_, format, args...));
  }
  static void Free(redisReply* reply) {
    if (reply != nullptr) freeReplyObject(reply);
  }

  // GET key: nullopt for nil.
  std::optional<std::string> Get(const std::string& key) {
    redisReply* reply = Command("GET %b", key.data(), key.size());
    std::optional<std::string> out;
    if (reply != nullptr && reply->type == REDIS_REPLY_STRING) out = std::string(reply->str, reply->len);
    Free(reply);
    return out;
  }
  std::map<std::string, std::string> HGetAll(const std::string& key) {
    redisReply* reply = Command("HGETALL %b", key.data(), key.size());
    std::map<std::string, std::string> out;
    if (reply != nullptr && reply->type == REDIS_REPLY_ARRAY) {
      for (size_t i = 0; i + 1 < reply->elements; i += 2) {
        out[std::string(reply->element[i]->str, reply->element[i]->len)] =
            std::string(reply->element[i + 1]->str, reply->element[i + 1]->len);
      }
    }
    Free(reply);
    return out;
  }
  std::string Type(const std::string& key) {
    redisReply* reply = Command("TYPE %b", key.data(), key.size());
    std::string out = reply != nullptr ? std::string(reply->str, reply->len) : "";
    Free(reply);
    return out;
  }
  long long DbSize() {
    redisReply* reply = Command("DBSIZE");
    long long n = reply != nullptr && reply->type == REDIS_REPLY_INTEGER ? reply->integer : -1;
    Free(reply);
    return n;
  }

 private:
  redisContext* context_ = nullptr;
};

// Polls `condition` every 10 ms for up to `timeout_ms`.
template <typename Condition>
bool WaitFor(Condition condition, int timeout_ms = 5000) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return condition();
}

class RedisStoreTest : public ::testing::Test {
 protected:
  void SetUp() override { StartServer(); }
  void TearDown() override { server_.Kill(); }

  void StartServer(const std::vector<std::string>& extra_args = {}) {
    for (int attempt = 0; attempt < 5; ++attempt) {
      if (server_.Start(FreePort(), extra_args)) return;
    }
    FAIL() << "could not start " << kRedisServer;
  }

  RedisWriterOptions WriterOptions() const {
    RedisWriterOptions options;
    options.connection.port = server_.port();
    options.spec_name = "fraud";
    options.flush_interval_ms = 20;
    options.initial_backoff_ms = 20;
    options.max_backoff_ms = 200;
    return options;
  }

  std::unique_ptr<RedisWriter> StartWriter(const RedisWriterOptions& options) {
    Result<std::unique_ptr<RedisWriter>> writer = RedisWriter::Start(options);
    EXPECT_TRUE(writer.ok()) << writer.status().message();
    return writer.ok() ? std::move(writer).value() : nullptr;
  }

  std::unique_ptr<RedisReader> MakeReader() const {
    RedisConnectionOptions options;
    options.port = server_.port();
    Result<std::unique_ptr<RedisReader>> reader = RedisReader::Create(options, "fraud");
    EXPECT_TRUE(reader.ok()) << reader.status().message();
    return reader.ok() ? std::move(reader).value() : nullptr;
  }

  RedisServerProcess server_;
};

// ------------------------------------------------------------------------------------------------
// Keys, value text, options (no server needed, but cheap enough to share the fixture)
// ------------------------------------------------------------------------------------------------

TEST(RedisKeyLayoutTest, KeysFollowTheDocumentedLayout) {
  RedisKeyLayout keys("fraud");
  EXPECT_EQ(keys.StateKey("u123"), "freshet:fraud:state:u123");
  EXPECT_EQ(keys.FeaturesKey("u123"), "freshet:fraud:features:u123");
  const std::string binary("a\0b", 3);
  EXPECT_EQ(keys.StateKey(binary), std::string("freshet:fraud:state:a\0b", 23));
  std::string buffer = "left over";
  keys.FeaturesKeyInto("x", &buffer);
  EXPECT_EQ(buffer, "freshet:fraud:features:x");
}

TEST(RedisKeyLayoutTest, FeatureTextIsShortestRoundTripAndNullIsLeftOut) {
  auto text = [](const Value& v) {
    std::string out = "|";
    const bool present = AppendRedisFeatureText(v, &out);
    return present ? out : std::string("<absent>");
  };
  EXPECT_EQ(text(Value::Int(42)), "|42");
  EXPECT_EQ(text(Value::Int(-9223372036854775807LL - 1)), "|-9223372036854775808");
  EXPECT_EQ(text(Value::Double(0.1)), "|0.1");
  EXPECT_EQ(text(Value::Double(2.5)), "|2.5");
  EXPECT_EQ(text(Value::Double(1e300)), "|1e+300");
  EXPECT_EQ(text(Value::Double(1.0 / 3.0)), "|0.3333333333333333");
  EXPECT_EQ(text(Value::Bool(true)), "|true");
  EXPECT_EQ(text(Value::String("books, \"new\"")), "|books, \"new\"");
  EXPECT_EQ(text(Value::String("")), "|");
  EXPECT_EQ(text(Value::Null()), "<absent>");
  EXPECT_EQ(text(Value::Missing()), "<absent>");
}

TEST(RedisOptionsTest, InvalidOptionsAreRejectedWithTheOptionName) {
  RedisWriterOptions options;
  options.spec_name = "fraud";
  EXPECT_TRUE(options.Validate().ok());
  options.connection.port = 70000;
  Status status = options.Validate();
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("port 70000"), std::string::npos) << status.message();
  options.connection.port = 6379;
  options.spec_name = "";
  EXPECT_NE(options.Validate().message().find("spec_name"), std::string::npos);
  options.spec_name = "fraud";
  options.max_batch = 0;
  EXPECT_NE(options.Validate().message().find("max_batch"), std::string::npos);
  options.max_batch = 10;
  options.initial_backoff_ms = 500;
  options.max_backoff_ms = 100;
  EXPECT_NE(options.Validate().message().find("max_backoff_ms"), std::string::npos);
  EXPECT_FALSE(RedisWriter::Start(options).ok());
  RedisConnectionOptions connection;
  EXPECT_FALSE(RedisReader::Create(connection, "").ok());
}

// ------------------------------------------------------------------------------------------------
// Writer
// ------------------------------------------------------------------------------------------------

TEST_F(RedisStoreTest, UpsertWritesTheDocumentedKeysReadableWithPlainHgetall) {
  std::unique_ptr<RedisWriter> writer = StartWriter(WriterOptions());
  ASSERT_NE(writer, nullptr);
  const std::string blob("\x01state\0with nul\xff", 16);
  const int64_t before_ms = WallClockMs();
  writer->Upsert("u123", blob,
                 {{"purchase_count_30m", "3"}, {"avg_txn_amount_1h", "2.5"}, {"last_category", "books"}},
                 1767225600000);
  ASSERT_TRUE(writer->Flush(5000).ok());
  const int64_t after_ms = WallClockMs();

  PlainClient client(server_.port());
  ASSERT_TRUE(client.ok());
  EXPECT_EQ(client.Type("freshet:fraud:state:u123"), "string");
  EXPECT_EQ(client.Type("freshet:fraud:features:u123"), "hash");
  EXPECT_EQ(client.Get("freshet:fraud:state:u123"), blob);
  std::map<std::string, std::string> hash = client.HGetAll("freshet:fraud:features:u123");
  ASSERT_EQ(hash.size(), 5u);
  EXPECT_EQ(hash["purchase_count_30m"], "3");
  EXPECT_EQ(hash["avg_txn_amount_1h"], "2.5");
  EXPECT_EQ(hash["last_category"], "books");
  EXPECT_EQ(hash["_event_time_ms"], "1767225600000");
  const int64_t updated_ms = std::stoll(hash["_updated_ms"]);
  EXPECT_GE(updated_ms, before_ms);
  EXPECT_LE(updated_ms, after_ms);
  EXPECT_EQ(client.DbSize(), 2);

  RedisWriterHealth health = writer->Health();
  EXPECT_TRUE(health.connected);
  EXPECT_EQ(health.pending_entities, 0u);
  EXPECT_EQ(health.consecutive_failures, 0u);
  EXPECT_GE(health.last_success_unix_ms, before_ms);
}

TEST_F(RedisStoreTest, AFeatureLeftOutOfALaterUpsertDisappearsFromTheHash) {
  std::unique_ptr<RedisWriter> writer = StartWriter(WriterOptions());
  ASSERT_NE(writer, nullptr);
  writer->Upsert("u1", "s1", {{"max_purchase_24h", "99.5"}, {"n", "1"}}, 1000);
  ASSERT_TRUE(writer->Flush(5000).ok());
  writer->Upsert("u1", "s2", {{"n", "2"}}, 2000);  // max_purchase_24h became null.
  ASSERT_TRUE(writer->Flush(5000).ok());
  PlainClient client(server_.port());
  std::map<std::string, std::string> hash = client.HGetAll("freshet:fraud:features:u1");
  EXPECT_EQ(hash.count("max_purchase_24h"), 0u);
  EXPECT_EQ(hash["n"], "2");
  EXPECT_EQ(hash["_event_time_ms"], "2000");
  EXPECT_EQ(client.Get("freshet:fraud:state:u1"), "s2");
}

TEST_F(RedisStoreTest, ReservedFieldsWinOverAFeatureOfTheSameName) {
  std::unique_ptr<RedisWriter> writer = StartWriter(WriterOptions());
  ASSERT_NE(writer, nullptr);
  writer->Upsert("u1", "s", {{"_event_time_ms", "not a time"}}, 1234);
  ASSERT_TRUE(writer->Flush(5000).ok());
  PlainClient client(server_.port());
  EXPECT_EQ(client.HGetAll("freshet:fraud:features:u1")["_event_time_ms"], "1234");
}

TEST_F(RedisStoreTest, UpsertsOfTheSameEntityCoalesceToTheLastOne) {
  RedisWriterOptions options = WriterOptions();
  options.flush_interval_ms = 60000;  // Nothing is written before Flush.
  std::unique_ptr<RedisWriter> writer = StartWriter(options);
  ASSERT_NE(writer, nullptr);
  for (int i = 0; i < 1000; ++i) {
    const std::string entity = "user" + std::to_string(i % 10);
    writer->Upsert(entity, "state" + std::to_string(i), {{"count", std::to_string(i)}}, 1000 + i);
  }
  EXPECT_EQ(writer->Health().pending_entities, 10u);
  ASSERT_TRUE(writer->Flush(5000).ok());

  PlainClient client(server_.port());
  EXPECT_EQ(client.DbSize(), 20);
  for (int e = 0; e < 10; ++e) {
    const int last = 990 + e;  // The last i with i % 10 == e.
    const std::string entity = "user" + std::to_string(e);
    EXPECT_EQ(client.Get("freshet:fraud:state:" + entity), "state" + std::to_string(last));
    std::map<std::string, std::string> hash = client.HGetAll("freshet:fraud:features:" + entity);
    EXPECT_EQ(hash["count"], std::to_string(last));
    EXPECT_EQ(hash["_event_time_ms"], std::to_string(1000 + last));
  }
  RedisWriterMetrics metrics = writer->Metrics();
  EXPECT_EQ(metrics.upserts, 1000u);
  EXPECT_EQ(metrics.coalesced, 990u);
  EXPECT_EQ(metrics.entities_written, 10u);
  EXPECT_EQ(metrics.batches_written, 1u);
}

TEST_F(RedisStoreTest, EntityNamesAreBinarySafe) {
  std::unique_ptr<RedisWriter> writer = StartWriter(WriterOptions());
  ASSERT_NE(writer, nullptr);
  const std::vector<std::string> entities = {"with space",
                                             "a:b:state:c",
                                             "ünïcødé 日本 🙂",
                                             "",
                                             std::string("nul\0byte", 8),
                                             "%s %b %d",
                                             "\r\n*3\r\n$3\r\nDEL",
                                             "{tag}",
                                             std::string(1000, 'x')};
  for (size_t i = 0; i < entities.size(); ++i) {
    writer->Upsert(entities[i], "blob" + std::to_string(i), {{"i", std::to_string(i)}},
                   static_cast<int64_t>(i));
  }
  ASSERT_TRUE(writer->Flush(5000).ok());

  PlainClient client(server_.port());
  EXPECT_EQ(client.DbSize(), static_cast<long long>(2 * entities.size()));  // No two entities collide.
  std::unique_ptr<RedisReader> reader = MakeReader();
  ASSERT_NE(reader, nullptr);
  for (size_t i = 0; i < entities.size(); ++i) {
    SCOPED_TRACE("entity #" + std::to_string(i));
    EXPECT_EQ(client.Get("freshet:fraud:state:" + entities[i]), "blob" + std::to_string(i));
    EXPECT_EQ(client.HGetAll("freshet:fraud:features:" + entities[i])["i"], std::to_string(i));
    Result<std::optional<std::string>> state = reader->GetState(entities[i]);
    ASSERT_TRUE(state.ok()) << state.status().message();
    EXPECT_EQ(*state, "blob" + std::to_string(i));
  }
}

TEST_F(RedisStoreTest, AFullBatchIsWrittenWithoutWaitingForTheInterval) {
  RedisWriterOptions options = WriterOptions();
  options.flush_interval_ms = 60000;
  options.max_batch = 10;
  std::unique_ptr<RedisWriter> writer = StartWriter(options);
  ASSERT_NE(writer, nullptr);
  for (int i = 0; i < 10; ++i) writer->Upsert("e" + std::to_string(i), "s", {}, i);
  EXPECT_TRUE(WaitFor([&] { return writer->Metrics().entities_written == 10; }));
  for (int i = 10; i < 35; ++i) writer->Upsert("e" + std::to_string(i), "s", {}, i);
  ASSERT_TRUE(writer->Flush(5000).ok());
  RedisWriterMetrics metrics = writer->Metrics();
  EXPECT_EQ(metrics.entities_written, 35u);
  EXPECT_EQ(metrics.batches_written, 4u);  // 10, then 10 + 10 + 5.
  PlainClient client(server_.port());
  EXPECT_EQ(client.DbSize(), 70);
}

TEST_F(RedisStoreTest, RedisDownKeepsEverythingAndCatchesUpWhenItReturns) {
  std::unique_ptr<RedisWriter> writer = StartWriter(WriterOptions());
  ASSERT_NE(writer, nullptr);
  for (int i = 0; i < 100; ++i) writer->Upsert("u" + std::to_string(i), "before", {{"v", "0"}}, i);
  ASSERT_TRUE(writer->Flush(5000).ok());

  server_.Kill();
  // Upserts go on while Redis is down: 100 rewritten entities and 100 new ones, several times each.
  for (int round = 1; round <= 3; ++round) {
    for (int i = 0; i < 200; ++i) {
      writer->Upsert("u" + std::to_string(i), "round" + std::to_string(round), {{"v", std::to_string(round)}},
                     1000 * round + i, /*arrival_ns=*/1);
    }
  }
  ASSERT_TRUE(
      WaitFor([&] { return !writer->Health().connected && writer->Health().consecutive_failures >= 2; }));
  RedisWriterHealth down = writer->Health();
  EXPECT_EQ(down.pending_entities, 200u);
  EXPECT_NE(down.last_error.find("127.0.0.1:" + std::to_string(server_.port())), std::string::npos)
      << down.last_error;
  Status flush = writer->Flush(100);
  EXPECT_FALSE(flush.ok());
  EXPECT_NE(flush.message().find("200 entities still pending"), std::string::npos) << flush.message();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_GE(writer->Health().oldest_pending_age_ms, 100);

  ASSERT_TRUE(server_.Start(server_.port()));  // Empty: nothing was persisted.
  ASSERT_TRUE(writer->Flush(10000).ok());
  PlainClient client(server_.port());
  EXPECT_EQ(client.DbSize(), 400);
  for (int i = 0; i < 200; ++i) {
    const std::string entity = "u" + std::to_string(i);
    EXPECT_EQ(client.Get("freshet:fraud:state:" + entity), "round3");
    EXPECT_EQ(client.HGetAll("freshet:fraud:features:" + entity)["_event_time_ms"], std::to_string(3000 + i));
  }
  RedisWriterHealth up = writer->Health();
  EXPECT_TRUE(up.connected);
  EXPECT_EQ(up.pending_entities, 0u);
  EXPECT_EQ(up.consecutive_failures, 0u);
  EXPECT_EQ(up.oldest_pending_age_ms, 0);
  RedisWriterMetrics metrics = writer->Metrics();
  EXPECT_EQ(metrics.entities_written, 300u);
  EXPECT_GE(metrics.connect_errors, 2u);
  EXPECT_GE(metrics.connects, 2u);
  EXPECT_EQ(metrics.freshness.count, 200u);  // The writes made with an arrival time.
}

TEST_F(RedisStoreTest, ANewerUpsertDuringAFailedBatchWinsOverTheRetry) {
  RedisWriterOptions options = WriterOptions();
  options.connection.command_timeout_ms = 500;
  std::unique_ptr<RedisWriter> writer = StartWriter(options);
  ASSERT_NE(writer, nullptr);
  ASSERT_TRUE(writer->Flush(5000).ok());
  ASSERT_TRUE(WaitFor([&] { return writer->Health().connected; }));

  server_.Pause();  // Writes now hang until the command timeout.
  for (int i = 0; i < 10; ++i) writer->Upsert("e" + std::to_string(i), "old", {}, 1, /*arrival_ns=*/100);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // The batch with "old" is in flight.
  for (int i = 0; i < 10; ++i) writer->Upsert("e" + std::to_string(i), "new", {}, 2, /*arrival_ns=*/200);
  ASSERT_TRUE(WaitFor([&] { return writer->Health().consecutive_failures >= 1; }));
  RedisWriterHealth health = writer->Health();
  EXPECT_FALSE(health.connected);
  EXPECT_EQ(health.pending_entities, 10u);
  EXPECT_NE(health.last_error.find("command_timeout_ms=500"), std::string::npos) << health.last_error;

  server_.Resume();
  ASSERT_TRUE(writer->Flush(10000).ok());
  PlainClient client(server_.port());
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(client.Get("freshet:fraud:state:e" + std::to_string(i)), "new");
    EXPECT_EQ(client.HGetAll("freshet:fraud:features:e" + std::to_string(i))["_event_time_ms"], "2");
  }
  RedisWriterMetrics metrics = writer->Metrics();
  EXPECT_EQ(metrics.entities_written, 10u);
  EXPECT_EQ(metrics.coalesced, 0u);  // The second round found no pending write: the first was in flight.
  // The retried writes keep the earlier arrival (100 ns on the steady clock: a huge freshness).
  EXPECT_EQ(metrics.freshness.count, 10u);
  EXPECT_EQ(metrics.freshness.cumulative_counts.back(), 0u);  // All beyond the largest bound (60 s).
}

TEST_F(RedisStoreTest, ConcurrentUpsertersWhileFlushingEndWithEveryLastValue) {
  RedisWriterOptions options = WriterOptions();
  options.flush_interval_ms = 1;
  options.max_batch = 50;
  std::unique_ptr<RedisWriter> writer = StartWriter(options);
  ASSERT_NE(writer, nullptr);
  constexpr int kThreads = 4;
  constexpr int kEntitiesPerThread = 200;
  constexpr int kVersions = 30;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int version = 1; version <= kVersions; ++version) {
        for (int e = 0; e < kEntitiesPerThread; ++e) {
          const std::string entity = "t" + std::to_string(t) + "e" + std::to_string(e);
          writer->Upsert(entity, "v" + std::to_string(version), {{"version", std::to_string(version)}},
                         version);
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  ASSERT_TRUE(writer->Flush(10000).ok());
  PlainClient client(server_.port());
  EXPECT_EQ(client.DbSize(), 2 * kThreads * kEntitiesPerThread);
  for (int t = 0; t < kThreads; ++t) {
    for (int e = 0; e < kEntitiesPerThread; ++e) {
      const std::string entity = "t" + std::to_string(t) + "e" + std::to_string(e);
      EXPECT_EQ(client.Get("freshet:fraud:state:" + entity), "v30") << entity;
    }
  }
  RedisWriterMetrics metrics = writer->Metrics();
  EXPECT_EQ(metrics.upserts, static_cast<uint64_t>(kThreads * kEntitiesPerThread * kVersions));
  EXPECT_EQ(metrics.upserts,
            metrics.coalesced + metrics.entities_written);  // Each upsert is written or replaced.
}

TEST_F(RedisStoreTest, MetricsCountBatchesAndFreshness) {
  std::unique_ptr<RedisWriter> writer = StartWriter(WriterOptions());
  ASSERT_NE(writer, nullptr);
  const int64_t now_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                             std::chrono::steady_clock::now().time_since_epoch())
                             .count();
  for (int i = 0; i < 50; ++i) writer->Upsert("e" + std::to_string(i), "s", {}, i, i < 30 ? now_ns : 0);
  ASSERT_TRUE(writer->Flush(5000).ok());
  RedisWriterMetrics metrics = writer->Metrics();
  EXPECT_EQ(metrics.entities_written, 50u);
  EXPECT_EQ(metrics.batch_latency.count, metrics.batches_written);
  EXPECT_GE(metrics.batches_written, 1u);
  EXPECT_EQ(metrics.freshness.count, 30u);
  EXPECT_GT(metrics.freshness.sum_seconds, 0);
  EXPECT_EQ(metrics.freshness.cumulative_counts.size(), metrics.freshness.upper_bounds_seconds.size());
  EXPECT_EQ(metrics.freshness.cumulative_counts.back(), 30u);  // All within 60 s.
  // Bytes: per entity "SET" key blob, "DEL" key, "HSET" key and the two reserved fields and values.
  EXPECT_GT(metrics.bytes_written, 50u * std::string("freshet:fraud:state:e0").size());
  EXPECT_EQ(metrics.write_errors, 0u);
}

TEST_F(RedisStoreTest, WritesGoToTheSelectedDatabase) {
  RedisWriterOptions options = WriterOptions();
  options.connection.db = 3;
  std::unique_ptr<RedisWriter> writer = StartWriter(options);
  ASSERT_NE(writer, nullptr);
  writer->Upsert("u1", "in db 3", {}, 1);
  ASSERT_TRUE(writer->Flush(5000).ok());
  PlainClient db0(server_.port());
  EXPECT_EQ(db0.DbSize(), 0);
  PlainClient db3(server_.port(), 3);
  EXPECT_EQ(db3.Get("freshet:fraud:state:u1"), "in db 3");
}

TEST_F(RedisStoreTest, PasswordIsCheckedAndUsed) {
  server_.Kill();
  StartServer({"--requirepass", "s3cret"});
  RedisConnectionOptions connection;
  connection.port = server_.port();
  Status no_password = CheckRedis(connection);
  EXPECT_FALSE(no_password.ok());
  EXPECT_NE(no_password.message().find("NOAUTH"), std::string::npos) << no_password.message();
  connection.password = "wrong";
  Status wrong = CheckRedis(connection);
  EXPECT_FALSE(wrong.ok());
  EXPECT_NE(wrong.message().find("authentication failed"), std::string::npos) << wrong.message();
  connection.password = "s3cret";
  EXPECT_TRUE(CheckRedis(connection).ok());

  RedisWriterOptions options = WriterOptions();
  options.connection = connection;
  std::unique_ptr<RedisWriter> writer = StartWriter(options);
  ASSERT_NE(writer, nullptr);
  writer->Upsert("u1", "secret state", {}, 1);
  ASSERT_TRUE(writer->Flush(5000).ok());
  PlainClient client(server_.port(), 0, "s3cret");
  EXPECT_EQ(client.Get("freshet:fraud:state:u1"), "secret state");
}

TEST_F(RedisStoreTest, CheckRedisNamesTheAddressWhenNothingListens) {
  RedisConnectionOptions connection;
  connection.port = server_.port();
  server_.Kill();
  Status status = CheckRedis(connection);
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("127.0.0.1:" + std::to_string(connection.port)), std::string::npos);
  EXPECT_NE(status.message().find("cannot connect"), std::string::npos) << status.message();
}

// ------------------------------------------------------------------------------------------------
// Reader
// ------------------------------------------------------------------------------------------------

TEST_F(RedisStoreTest, ReaderMGetsStatesInOrderAcrossChunks) {
  std::unique_ptr<RedisWriter> writer = StartWriter(WriterOptions());
  ASSERT_NE(writer, nullptr);
  for (int i = 0; i < 2500; i += 2)
    writer->Upsert("e" + std::to_string(i), "state of " + std::to_string(i), {}, i);
  ASSERT_TRUE(writer->Flush(10000).ok());

  std::unique_ptr<RedisReader> reader = MakeReader();
  ASSERT_NE(reader, nullptr);
  std::vector<std::string> entities;
  for (int i = 2499; i >= 0; --i)
    entities.push_back("e" + std::to_string(i));  // Odd ones were never written.
  Result<std::vector<std::optional<std::string>>> states = reader->MGetState(entities);
  ASSERT_TRUE(states.ok()) << states.status().message();
  ASSERT_EQ(states->size(), 2500u);
  for (int k = 0; k < 2500; ++k) {
    const int i = 2499 - k;
    if (i % 2 == 0) {
      EXPECT_EQ((*states)[k], "state of " + std::to_string(i)) << "entity e" << i;
    } else {
      EXPECT_EQ((*states)[k], std::nullopt) << "entity e" << i;
    }
  }
  Result<std::vector<std::optional<std::string>>> none = reader->MGetState({});
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());

  Result<std::optional<std::string>> missing = reader->GetState("e1");
  ASSERT_TRUE(missing.ok());
  EXPECT_EQ(*missing, std::nullopt);

  Result<std::optional<std::vector<std::pair<std::string, std::string>>>> features =
      reader->GetFeatures("e4");
  ASSERT_TRUE(features.ok()) << features.status().message();
  ASSERT_TRUE(features->has_value());
  std::map<std::string, std::string> hash((*features)->begin(), (*features)->end());
  EXPECT_EQ(hash.size(), 2u);
  EXPECT_EQ(hash["_event_time_ms"], "4");
  Result<std::optional<std::vector<std::pair<std::string, std::string>>>> no_features =
      reader->GetFeatures("e5");
  ASSERT_TRUE(no_features.ok());
  EXPECT_FALSE(no_features->has_value());
}

TEST_F(RedisStoreTest, ReaderReconnectsAfterARestartAndReportsADownServer) {
  std::unique_ptr<RedisReader> reader = MakeReader();
  ASSERT_NE(reader, nullptr);
  PlainClient client(server_.port());
  PlainClient::Free(client.Command("SET %s %s", "freshet:fraud:state:u1", "v1"));
  Result<std::optional<std::string>> first = reader->GetState("u1");
  ASSERT_TRUE(first.ok()) << first.status().message();
  EXPECT_EQ(*first, "v1");

  server_.Kill();
  Result<std::optional<std::string>> down = reader->GetState("u1");
  ASSERT_FALSE(down.ok());
  EXPECT_NE(down.status().message().find("127.0.0.1:" + std::to_string(server_.port())), std::string::npos)
      << down.status().message();

  ASSERT_TRUE(server_.Start(server_.port()));
  PlainClient again(server_.port());
  PlainClient::Free(again.Command("SET %s %s", "freshet:fraud:state:u1", "v2"));
  Result<std::optional<std::string>> after = reader->GetState("u1");
  ASSERT_TRUE(after.ok()) << after.status().message();
  EXPECT_EQ(*after, "v2");
}

TEST_F(RedisStoreTest, ReaderReportsAWrongKeyType) {
  PlainClient client(server_.port());
  PlainClient::Free(client.Command("HSET %s %s %s", "freshet:fraud:state:h", "a", "b"));
  std::unique_ptr<RedisReader> reader = MakeReader();
  ASSERT_NE(reader, nullptr);
  Result<std::optional<std::string>> state = reader->GetState("h");
  ASSERT_FALSE(state.ok());
  EXPECT_NE(state.status().message().find("WRONGTYPE"), std::string::npos) << state.status().message();
  // The connection is still in step: the next read works.
  Result<std::optional<std::string>> other = reader->GetState("nothing");
  ASSERT_TRUE(other.ok()) << other.status().message();
  EXPECT_EQ(*other, std::nullopt);
}

TEST_F(RedisStoreTest, StopLeavesPendingWritesVisibleAndFlushFailsFast) {
  RedisWriterOptions options = WriterOptions();
  options.flush_interval_ms = 60000;
  std::unique_ptr<RedisWriter> writer = StartWriter(options);
  ASSERT_NE(writer, nullptr);
  writer->Stop();
  writer->Stop();  // Idempotent.
  writer->Upsert("u1", "s", {}, 1);
  EXPECT_EQ(writer->Health().pending_entities, 1u);
  const auto started = std::chrono::steady_clock::now();
  Status flush = writer->Flush(10000);
  EXPECT_FALSE(flush.ok());
  EXPECT_NE(flush.message().find("writer stopped"), std::string::npos) << flush.message();
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(5));
}

// ------------------------------------------------------------------------------------------------
// The sync marker: a Redis that lost its data is found without waiting for a write
// ------------------------------------------------------------------------------------------------

// Upserts entities e0..e{n-1} (a full sync) and marks it.
void FullSync(RedisWriter& writer, int n, uint64_t resyncs_seen) {
  for (int i = 0; i < n; ++i) {
    writer.Upsert("e" + std::to_string(i), "s" + std::to_string(i), {{"i", "1"}}, i);
  }
  writer.MarkFullSync(resyncs_seen, static_cast<size_t>(n));
}

TEST_F(RedisStoreTest, TheMarkerIsWrittenWithTheLastEntityOfAFullSync) {
  RedisWriterOptions options = WriterOptions();
  options.max_batch = 7;  // Several batches: the marker goes with the last one.
  std::unique_ptr<RedisWriter> writer = StartWriter(options);
  ASSERT_NE(writer, nullptr);
  EXPECT_FALSE(writer->Health().in_sync);
  FullSync(*writer, 50, 0);
  ASSERT_TRUE(WaitFor([&] { return writer->Health().in_sync; }));
  PlainClient client(server_.port());
  EXPECT_EQ(client.DbSize(), 101);  // 50 states, 50 hashes, the marker.
  std::optional<std::string> marker = client.Get("freshet:fraud:marker");
  ASSERT_TRUE(marker.has_value());
  EXPECT_NE(marker->find("\"entities\":50"), std::string::npos) << *marker;
  EXPECT_EQ(writer->Health().out_of_sync_reason, "");
  EXPECT_EQ(writer->Metrics().resyncs_requested, 0u);
}

TEST_F(RedisStoreTest, AFlushAllWhileIdleIsFoundByTheCheckAndAsksForAResync) {
  RedisWriterOptions options = WriterOptions();
  options.check_interval_ms = 100;
  std::unique_ptr<RedisWriter> writer = StartWriter(options);
  ASSERT_NE(writer, nullptr);
  FullSync(*writer, 20, 0);
  ASSERT_TRUE(WaitFor([&] { return writer->Health().in_sync; }));

  PlainClient client(server_.port());
  PlainClient::Free(client.Command("FLUSHALL"));
  // No Upsert: the periodic check alone finds that the marker is gone.
  ASSERT_TRUE(WaitFor([&] { return writer->Metrics().resyncs_requested == 1; }));
  RedisWriterHealth health = writer->Health();
  EXPECT_FALSE(health.in_sync);
  EXPECT_TRUE(health.connected);
  EXPECT_NE(health.out_of_sync_reason.find("lost its data"), std::string::npos) << health.out_of_sync_reason;
  EXPECT_EQ(writer->Metrics().marker_losses, 1u);
  EXPECT_EQ(client.DbSize(), 0);

  FullSync(*writer, 20, 1);
  ASSERT_TRUE(WaitFor([&] { return writer->Health().in_sync; }));
  EXPECT_EQ(client.DbSize(), 41);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // Further checks find the marker.
  EXPECT_EQ(writer->Metrics().resyncs_requested, 1u);
  EXPECT_TRUE(writer->Health().in_sync);
}

TEST_F(RedisStoreTest, AnIdleWriterSeesRedisGoAndAsksForAResyncWhenItReturnsEmpty) {
  RedisWriterOptions options = WriterOptions();
  options.check_interval_ms = 100;
  std::unique_ptr<RedisWriter> writer = StartWriter(options);
  ASSERT_NE(writer, nullptr);
  FullSync(*writer, 20, 0);
  ASSERT_TRUE(WaitFor([&] { return writer->Health().in_sync; }));

  server_.Kill();
  // Nothing is written, yet the writer knows within a check or two that Redis is gone.
  ASSERT_TRUE(WaitFor([&] { return !writer->Health().connected; }));
  EXPECT_NE(writer->Health().last_error.find("127.0.0.1:" + std::to_string(server_.port())),
            std::string::npos);
  ASSERT_TRUE(server_.Start(server_.port()));  // Empty.
  ASSERT_TRUE(
      WaitFor([&] { return writer->Health().connected && writer->Metrics().resyncs_requested == 1; }));
  RedisWriterHealth health = writer->Health();
  EXPECT_FALSE(health.in_sync);
  EXPECT_NE(health.out_of_sync_reason.find("lost its data"), std::string::npos) << health.out_of_sync_reason;

  // A full sync answering an older request writes no marker: its writes may have gone to the lost Redis.
  FullSync(*writer, 20, 0);
  ASSERT_TRUE(writer->Flush(5000).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  PlainClient client(server_.port());
  EXPECT_EQ(client.Get("freshet:fraud:marker"), std::nullopt);
  EXPECT_FALSE(writer->Health().in_sync);
  FullSync(*writer, 20, 1);
  ASSERT_TRUE(WaitFor([&] { return writer->Health().in_sync; }));
  EXPECT_EQ(client.DbSize(), 41);
}

TEST_F(RedisStoreTest, WithoutMarkFullSyncTheWriterNeitherChecksNorWritesAMarker) {
  std::unique_ptr<RedisWriter> writer = StartWriter(WriterOptions());
  ASSERT_NE(writer, nullptr);
  writer->Upsert("u1", "s", {}, 1);
  ASSERT_TRUE(writer->Flush(5000).ok());
  PlainClient client(server_.port());
  EXPECT_EQ(client.DbSize(), 2);
  EXPECT_FALSE(writer->Health().in_sync);
  PlainClient::Free(client.Command("FLUSHALL"));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(writer->Metrics().resyncs_requested, 0u);
}

TEST_F(RedisStoreTest, ReaderReadsTheMarkerAtomicallyWithTheStates) {
  std::unique_ptr<RedisReader> reader = MakeReader();
  ASSERT_NE(reader, nullptr);
  std::vector<std::string> entities;
  for (int i = 0; i < 2500; ++i) entities.push_back("e" + std::to_string(i));  // Three MGETs.
  bool marker_present = true;
  Result<std::vector<std::optional<std::string>>> states = reader->MGetState(entities, &marker_present);
  ASSERT_TRUE(states.ok()) << states.status().message();
  EXPECT_FALSE(marker_present);
  Result<std::optional<std::string>> no_marker = reader->GetMarker();
  ASSERT_TRUE(no_marker.ok());
  EXPECT_EQ(*no_marker, std::nullopt);

  std::unique_ptr<RedisWriter> writer = StartWriter(WriterOptions());
  ASSERT_NE(writer, nullptr);
  FullSync(*writer, 2000, 0);
  ASSERT_TRUE(WaitFor([&] { return writer->Health().in_sync; }, 10000));
  states = reader->MGetState(entities, &marker_present);
  ASSERT_TRUE(states.ok()) << states.status().message();
  EXPECT_TRUE(marker_present);
  ASSERT_EQ(states->size(), 2500u);
  EXPECT_EQ((*states)[0], "s0");
  EXPECT_EQ((*states)[1999], "s1999");
  EXPECT_EQ((*states)[2000], std::nullopt);
  Result<std::vector<std::optional<std::string>>> none = reader->MGetState({}, &marker_present);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(marker_present);
  Result<std::optional<std::string>> marker = reader->GetMarker();
  ASSERT_TRUE(marker.ok());
  ASSERT_TRUE(marker->has_value());
  EXPECT_NE((*marker)->find("\"entities\":2000"), std::string::npos) << **marker;
}

}  // namespace
}  // namespace freshet
