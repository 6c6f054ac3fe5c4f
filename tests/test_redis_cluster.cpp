// A bank's records in a Redis Cluster (m3/redis_cluster.h, m3/bank_remote.h) against real
// 6-node clusters (scripts/redis-cluster.sh: 3 masters, 3 replicas, cluster-node-timeout 1000 ms):
//   - key slots against the server's own CLUSTER KEYSLOT for thousands of keys, and the spec's
//     check value CRC16("123456789") = 0x31C3;
//   - MOVED (a slot resharded while the client holds the old map) and ASK (a slot in
//     MIGRATING/IMPORTING state);
//   - `m3 bank push` killed with SIGKILL twice and resumed: identical records and files; pushes
//     refused or repaired; fetched files re-fetched only when their checksum changed;
//   - faults: (a) a master killed with SIGKILL while threads read memories: reads go on after the
//     replica takes over, within a measured and asserted time, every answer byte-identical to the
//     local bank; twice; (b) a master and its replica killed: reads of that slot range fail with
//     a clear error within the retry budget, the other ranges keep answering; (c) two `m3 serve
//     --bank redis://...` processes answer like a server on the local bank, also after a master
//     was killed.
// Each test that needs a cluster starts its own (about 5 s) and always stops it. The fault tests
// print what they measured (faults injected, reads checked, failover times); docs/redis-cluster.md
// records them. Without redis-server these tests fail, they do not skip.
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <mutex>
#include <random>
#include <regex>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "bank_fixtures.h"
#include "m3/bank.h"
#include "m3/bank_remote.h"
#include "m3/knowledge.h"
#include "m3/memory_writer.h"
#include "m3/model.h"
#include "m3/redis_cluster.h"
#include "m3/thread_pool.h"
#include "redis_test_cluster.h"
#include "test_helpers.h"

namespace m3 {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using test::error_of;

const std::string kData = M3_TEST_DATA;
const std::string kM3 = test::m3_binary();

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

const Model& f32_model() {
  static const std::unique_ptr<Model> model = Model::load(kData + "/test-f32.gguf");
  return *model;
}

// A bank of random memories (every reference memorized) in `dir`.
void make_random_bank(const std::string& dir, int n_docs, int refs_per_doc, uint64_t seed = 1) {
  const test::Corpus c = test::make_corpus(n_docs, refs_per_doc);
  auto bank = MemoryBank::create(dir, f32_model(), "bf16", "bf16");
  bank->add_references(c.docs, c.refs);
  for (int64_t id = 0; id < int64_t(c.n_tokens.size()); ++id)
    bank->append(test::random_memory(bank->shape(), id, c.n_tokens[size_t(id)], seed));
  bank->flush();
}

// The ids whose record keys fall in `node`'s slots.
std::vector<int64_t> ids_served_by(const test::RedisTestCluster::Node& node, const std::string& bank, int64_t n) {
  std::vector<int64_t> out;
  for (int64_t id = 0; id < n; ++id)
    if (test::RedisTestCluster::owns(node, redis_key_slot(RemoteBankKeys{bank}.record(id)))) out.push_back(id);
  return out;
}

// A master that has a live replica, other than the ones in `dead`, with that replica.
std::pair<test::RedisTestCluster::Node, test::RedisTestCluster::Node> master_with_replica(
    const test::RedisTestCluster& cluster, int ask_port, const std::set<int>& dead) {
  const auto nodes = cluster.nodes(ask_port);
  for (const auto& m : nodes) {
    if (!m.master || m.failed || m.slots.empty() || dead.count(m.port)) continue;
    for (const auto& r : nodes)
      if (!r.master && !r.failed && r.master_id == m.id && !dead.count(r.port)) return {m, r};
  }
  ADD_FAILURE() << "no master with a live replica";
  return {};
}

// ---- key slots ----------------------------------------------------------------------------------

TEST(RedisCluster, KeySlotsAgreeWithTheServer) {
  // The specification's check value and hash-tag examples.
  EXPECT_EQ(redis_crc16("123456789"), 0x31C3);
  EXPECT_EQ(redis_key_slot("{user1000}.following"), redis_key_slot("{user1000}.followers"));
  EXPECT_EQ(redis_key_slot("foo{}{bar}"), redis_crc16("foo{}{bar}") % 16384);  // empty tag: whole key
  EXPECT_EQ(redis_key_slot("foo{{bar}}zap"), redis_crc16("{bar") % 16384);
  EXPECT_EQ(redis_key_slot("foo{bar}{zap}"), redis_crc16("bar") % 16384);

  // Thousands of keys, printable and binary, braces sprinkled in, against the server (the
  // oracle: its own CLUSTER KEYSLOT, fed through one redis-cli with \xHH escapes).
  test::RedisTestCluster cluster;
  std::vector<std::string> keys = {"", "{", "}", "{}", "}{", "{a", "a}", "{a}", "a{b}c{d}e", "{}{x}", "m3:bank:r:0",
                                   "m3:bank:meta", std::string("\0{\0}", 4), "123456789"};
  std::mt19937 rng(42);
  const std::string alphabet = "abcxyz019:{}-_ ";
  for (int i = 0; i < 3000; ++i) {
    std::string k(rng() % 24, '\0');
    for (char& ch : k) ch = i % 2 ? alphabet[rng() % alphabet.size()] : char(rng() % 256);
    keys.push_back(k);
  }
  std::string input;
  for (const std::string& k : keys) {
    input += "CLUSTER KEYSLOT \"";
    for (const unsigned char ch : k) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", ch);
      input += hex;
    }
    input += "\"\n";
  }
  test::TempDir tmp;
  test::write_all(tmp.file("keys.txt"), input);
  const test::RunResult r = test::run("redis-cli -p " + std::to_string(cluster.port(0)) + " < " + tmp.file("keys.txt"));
  ASSERT_EQ(r.exit_code, 0) << r.out.substr(0, 500);
  std::istringstream lines(r.out);
  size_t i = 0, agreed = 0;
  for (std::string line; std::getline(lines, line) && i < keys.size(); ++i) {
    EXPECT_EQ(redis_key_slot(keys[i]), std::atoi(line.c_str())) << "key #" << i << " (" << keys[i].size() << " bytes)";
    agreed += redis_key_slot(keys[i]) == std::atoi(line.c_str());
  }
  EXPECT_EQ(i, keys.size()) << "redis-cli answered " << i << " of " << keys.size();
  std::printf("key slots: %zu of %zu keys agree with CLUSTER KEYSLOT\n", agreed, keys.size());
}

// ---- redirections ---------------------------------------------------------------------------------

TEST(RedisCluster, AskDuringMigrationMovedAfterIt) {
  test::RedisTestCluster cluster;
  RedisCluster client(parse_redis_endpoints(cluster.seeds()));
  const std::string a = "{m3-redirect}a", b = "{m3-redirect}b";
  const int slot = redis_key_slot(a);
  ASSERT_EQ(client.run(RedisCommand{{"SET", a, "alpha"}}).str, "OK");

  const auto nodes = cluster.nodes(cluster.port(0));
  test::RedisTestCluster::Node src, dst;
  for (const auto& n : nodes)
    if (n.master && test::RedisTestCluster::owns(n, slot)) src = n;
  for (const auto& n : nodes)
    if (n.master && n.id != src.id) dst = n;
  ASSERT_FALSE(src.id.empty());
  ASSERT_FALSE(dst.id.empty());
  EXPECT_EQ(client.slot_owner(slot).port, src.port);
  const std::string s = std::to_string(slot);

  // The slot migrates from src to dst; key a has already moved, b does not exist yet.
  ASSERT_EQ(cluster.cli(dst.port, "cluster setslot " + s + " importing " + src.id), "OK");
  ASSERT_EQ(cluster.cli(src.port, "cluster setslot " + s + " migrating " + dst.id), "OK");
  ASSERT_EQ(cluster.cli(src.port, "migrate 127.0.0.1 " + std::to_string(dst.port) + " \"\" 0 5000 keys " + a), "OK");
  EXPECT_EQ(client.run(RedisCommand{{"GET", a}}).str, "alpha");  // src: -ASK → ASKING + GET on dst
  EXPECT_EQ(client.stats().asked, 1u);
  EXPECT_EQ(client.run(RedisCommand{{"SET", b, "beta"}}).str, "OK");  // a new key of a migrating slot goes to dst
  EXPECT_EQ(client.stats().asked, 2u);
  EXPECT_EQ(client.stats().moved, 0u);
  EXPECT_EQ(client.slot_owner(slot).port, src.port) << "ASK must not change the map";
  EXPECT_EQ(cluster.cli(dst.port, "-c get " + b).find("beta") != std::string::npos, true);

  // The migration ends: every master learns that dst owns the slot; the client's map is stale.
  ASSERT_EQ(cluster.cli(dst.port, "cluster setslot " + s + " node " + dst.id), "OK");
  ASSERT_EQ(cluster.cli(src.port, "cluster setslot " + s + " node " + dst.id), "OK");
  for (const auto& n : nodes)
    if (n.master && n.id != src.id && n.id != dst.id) cluster.cli(n.port, "cluster setslot " + s + " node " + dst.id);
  const std::vector<RedisValue> got = client.get_many({a, b});
  EXPECT_EQ(got[0].str, "alpha");
  EXPECT_EQ(got[1].str, "beta");
  EXPECT_GE(client.stats().moved, 1u);
  EXPECT_EQ(client.slot_owner(slot).port, dst.port) << "MOVED must update the map";
  const uint64_t moved = client.stats().moved;
  EXPECT_EQ(client.run(RedisCommand{{"GET", a}}).str, "alpha");
  EXPECT_EQ(client.stats().moved, moved) << "the updated map sends the next command straight to dst";
  std::printf("redirections: %llu ASK, %llu MOVED followed\n", static_cast<unsigned long long>(client.stats().asked),
              static_cast<unsigned long long>(client.stats().moved));
}

// ---- URIs and an unreachable cluster (no cluster needed) -----------------------------------------

TEST(RedisCluster, BadUrisAndAnUnreachableClusterGiveClearErrors) {
  for (const auto& [text, needle] : std::vector<std::pair<std::string, std::string>>{
           {"redis://127.0.0.1:7000", "no bank name"},
           {"redis://127.0.0.1/b", "is not host:port"},
           {"redis://127.0.0.1:99999/b", "is not host:port"},
           {"redis://127.0.0.1:7000/a{b}", "must be 1 or more of"},
           {"redis://127.0.0.1:7000/b?retry_ms=x", "needs a number of milliseconds"},
           {"redis://127.0.0.1:7000/b?colour=1", "unknown option 'colour'"}}) {
    const std::string uri = text;  // clang 14 cannot capture a structured binding
    EXPECT_NE(error_of([&] { RemoteBankUri::parse(uri); }).find(needle), std::string::npos) << uri;
  }
  const RemoteBankUri u = RemoteBankUri::parse("redis://a:1,b:2/x.y-z?retry_ms=1500&connect_timeout_ms=300");
  EXPECT_EQ(u.seeds.size(), 2u);
  EXPECT_EQ(u.seeds[1].str(), "b:2");
  EXPECT_EQ(u.bank, "x.y-z");
  EXPECT_EQ(u.options.retry_budget_ms, 1500);
  EXPECT_EQ(u.options.connect_timeout_ms, 300);
  EXPECT_EQ(RemoteBankKeys{"x"}.record(12), "m3:x:r:12");

  // Nothing listens on port 1: refused at once, retried for the budget, then one clear error.
  const auto t0 = Clock::now();
  const std::string e = error_of([] { open_bank_for_reading("redis://127.0.0.1:1/b?retry_ms=800", nullptr, "/nonexistent"); });
  const double took = since(t0);
  EXPECT_NE(e.find("127.0.0.1:1"), std::string::npos) << e;
  EXPECT_NE(e.find("gave up after"), std::string::npos) << e;
  EXPECT_GE(took, 0.4) << e;
  EXPECT_LT(took, 5.0) << e;
  test::TempDir tmp;
  make_random_bank(tmp.file("bank"), 1, 2);
  test::expect_error("bank push " + tmp.file("bank") + " 'redis://127.0.0.1:1/b?retry_ms=300'", "cannot reach the cluster");
  test::expect_error("serve -m " + kData + "/test-rt.gguf --bank 'redis://127.0.0.1:1/b?retry_ms=300' --bank-cache " +
                         tmp.file("cache") + " --port 0",
                     "gave up after");
}

// ---- push: resumable, verified, refusing the wrong bank -----------------------------------------------

TEST(RedisCluster, PushKilledTwiceResumesToIdenticalData) {
  test::RedisTestCluster cluster;
  test::TempDir tmp;
  const std::string dir = tmp.file("bank");
  make_random_bank(dir, 30, 10);  // 300 records
  const std::string uri = cluster.uri("resume");
  RedisCluster client(parse_redis_endpoints(cluster.seeds()));
  auto progress = [&] {
    const RedisValue v = client.run(RedisCommand{{"GET", RemoteBankKeys{"resume"}.progress()}});
    return v.is_nil() ? int64_t(0) : int64_t(std::stoll(v.str));
  };
  EXPECT_NE(error_of([&] { open_bank_for_reading(uri, nullptr, tmp.file("c0")); }).find("holds no bank of that name"),
            std::string::npos);

  // Two pushes killed with SIGKILL partway (16 records a batch, 50 ms between batches).
  int kills = 0;
  int64_t last = 0;
  for (const int64_t kill_after : {48, 160}) {
    test::ChildProcess c = test::spawn({kM3, "bank", "push", dir, uri, "--batch", "16"}, {"M3_PUSH_THROTTLE_MS=50"});
    const auto t0 = Clock::now();
    while (progress() < kill_after && since(t0) < 60) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    c.send_signal(SIGKILL);
    EXPECT_EQ(c.wait_exit(), 128 + SIGKILL);
    ++kills;
    const int64_t p = progress();
    EXPECT_GE(p, kill_after);
    EXPECT_LT(p, 300) << "the push finished before it was killed";
    EXPECT_EQ(p % 16, 0) << "progress moves a whole batch at a time";
    EXPECT_GE(p, last);
    last = p;
    EXPECT_NE(error_of([&] { open_bank_for_reading(uri, nullptr, tmp.file("c0")); }).find("has not finished"),
              std::string::npos);
  }
  const test::RunResult r = test::run(kM3 + " bank push " + dir + " " + uri + " --batch 16");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("300 records (resumed at " + std::to_string(last) + ", copied " + std::to_string(300 - last) +
                       ", verified 300, rewritten 0)"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("replicas in sync"), std::string::npos) << r.out;

  // Identical data: every record's bytes, the catalog's answers, the files.
  auto local = MemoryBank::open(dir, nullptr, false);
  const FetchReport f = fetch_remote_bank(uri, tmp.file("cache"));
  EXPECT_EQ(f.records, 300);
  EXPECT_EQ(f.files_fetched, 2);  // manifest.json, catalog.sqlite (bf16 has no codec files)
  auto remote = MemoryBank::open(f.dir, nullptr, false);
  ASSERT_EQ(remote->memory_count(), 300);
  std::vector<uint8_t> a, b;
  local->read_raw(0, 300, a);
  remote->read_raw(0, 300, b);
  EXPECT_TRUE(a == b) << "records differ";
  EXPECT_EQ(test::read_all(f.dir + "/manifest.json"), test::read_all(dir + "/manifest.json"));
  for (int64_t id : {0, 157, 299}) {
    EXPECT_EQ(remote->reference(id).text, local->reference(id).text);
    EXPECT_EQ(remote->reference(id).tokens, local->reference(id).tokens);
  }
  EXPECT_TRUE(remote->verify().ok());

  // Pushing again changes nothing; a changed catalog is sent and re-fetched alone.
  const test::RunResult again = test::run(kM3 + " bank push " + dir + " " + uri);
  EXPECT_NE(again.out.find("(resumed at 300, copied 0, verified 300, rewritten 0); files: 0 sent"), std::string::npos)
      << again.out;
  EXPECT_EQ(fetch_remote_bank(uri, tmp.file("cache")).files_fetched, 0);
  local.reset();
  MemoryBank::open(dir, nullptr, true)->delete_document("doc3");
  const test::RunResult after_delete = test::run(kM3 + " bank push " + dir + " " + uri);
  EXPECT_NE(after_delete.out.find("files: 1 sent"), std::string::npos) << after_delete.out;
  const FetchReport f2 = fetch_remote_bank(uri, tmp.file("cache"));
  EXPECT_EQ(f2.files_fetched, 1);
  EXPECT_EQ(f2.files_fresh, 1);
  EXPECT_TRUE(MemoryBank::open(f2.dir, nullptr, false)->reference(30).deleted);
  // `m3 bank verify` and `info` read the cluster through the same URI.
  const test::RunResult v = test::run("M3_BANK_CACHE=" + tmp.file("cli-cache") + " " + kM3 + " bank verify " + uri);
  EXPECT_EQ(v.exit_code, 0) << v.out;
  EXPECT_NE(v.out.find("ok: 300 records verified"), std::string::npos) << v.out;

  // A different bank under the same name is refused; a local cache is no bank to push.
  make_random_bank(tmp.file("other"), 1, 3);
  test::expect_error("bank push " + tmp.file("other") + " " + uri, "holds another bank");
  test::expect_error("bank push " + f.dir + " " + cluster.uri("x"), "is a cache of");
  std::printf("push: %d SIGKILLs injected, resumed at %lld, 300 records identical\n", kills, static_cast<long long>(last));
}

// ---- fault (a): a master dies, its replica takes over, readers go on -------------------------------------

TEST(RedisClusterFault, ReadsContinueThroughMasterFailovers) {
  test::RedisTestCluster cluster;
  test::TempDir tmp;
  const std::string dir = tmp.file("bank");
  make_random_bank(dir, 40, 10);  // 400 records
  const int64_t n = 400;
  const std::string name = "failover";
  const PushReport pushed = push_bank(dir, cluster.uri(name));
  ASSERT_TRUE(pushed.replicated) << "the replicas must hold every record before a master is killed";
  auto local = MemoryBank::open(dir, nullptr, false);
  std::vector<ExplicitMemory> want;
  for (int64_t id = 0; id < n; ++id) want.push_back(local->read(id));
  // A budget above any failover here: a read waits for the replica rather than fail.
  auto remote = open_bank_for_reading(cluster.uri(name, "retry_ms=30000"), nullptr, tmp.file("cache"));

  std::atomic<bool> stop{false};
  std::atomic<int64_t> reads{0}, checked{0}, failed{0}, differed{0}, longest_us{0};
  std::mutex mu;
  std::string first_error;
  auto reader = [&](uint32_t seed) {
    std::mt19937 rng(seed);
    while (!stop) {
      std::vector<int64_t> ids;
      for (int k = 0; k < 5; ++k) ids.push_back(int64_t(rng() % n));
      const auto t0 = Clock::now();
      try {
        const std::vector<ExplicitMemory> got = remote->read_many(ids);
        for (size_t k = 0; k < ids.size(); ++k) {
          const ExplicitMemory& w = want[size_t(ids[k])];
          const bool same = got[k].reference_id == ids[k] && got[k].positions == w.positions && got[k].keys == w.keys &&
                            got[k].values == w.values;
          ++(same ? checked : differed);
        }
      } catch (const Error& e) {
        ++failed;
        std::lock_guard<std::mutex> lock(mu);
        if (first_error.empty()) first_error = e.what();
      }
      ++reads;
      const int64_t us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0).count();
      for (int64_t cur = longest_us.load(); us > cur && !longest_us.compare_exchange_weak(cur, us);) {
      }
    }
  };
  std::vector<std::thread> readers;
  for (uint32_t t = 0; t < 3; ++t) readers.emplace_back(reader, t + 1);

  struct Fault {
    int port;
    double client_recovered_s = -1;   // kill → the first read of the dead master's keys answered
    double cluster_promoted_s = -1;   // kill → the replica reports itself master
  };
  std::vector<Fault> faults;
  std::set<int> dead;
  for (int round = 0; round < 2; ++round) {
    std::this_thread::sleep_for(std::chrono::milliseconds(700));  // steady reading first
    int ask = cluster.port(0);
    while (dead.count(ask)) ++ask;
    const auto [master, replica] = master_with_replica(cluster, ask, dead);
    ASSERT_GT(master.port, 0);
    const std::vector<int64_t> probe = ids_served_by(master, name, n);
    ASSERT_FALSE(probe.empty());
    const auto t_kill = Clock::now();
    cluster.kill_node(master.port);
    dead.insert(master.port);
    Fault f{master.port};
    // The cluster's view, polled meanwhile: when the replica calls itself master.
    std::atomic<double> promoted{-1};
    std::thread poller([&, replica_id = replica.id, replica_port = replica.port] {
      while (since(t_kill) < 30) {
        for (const auto& nd : cluster.nodes(replica_port))
          if (nd.id == replica_id && nd.master) {
            promoted = since(t_kill);
            return;
          }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    });
    // The client's view: a read of keys only the dead master served; it returns once the
    // replica serves them (the readers keep going meanwhile).
    const std::vector<int64_t> probe5(probe.begin(), probe.begin() + int64_t(std::min<size_t>(5, probe.size())));
    const std::vector<ExplicitMemory> got = remote->read_many(probe5);
    f.client_recovered_s = since(t_kill);
    EXPECT_EQ(got[0].keys, want[size_t(probe[0])].keys);
    poller.join();
    f.cluster_promoted_s = promoted;
    faults.push_back(f);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(700));  // and reading on the new masters
  stop = true;
  for (auto& t : readers) t.join();

  EXPECT_EQ(failed.load(), 0) << first_error;
  EXPECT_EQ(differed.load(), 0);
  EXPECT_GT(checked.load(), 1000);
  const double longest = double(longest_us.load()) / 1e6;
  EXPECT_LT(longest, 15.0) << "a read waited too long";
  std::printf("fault (a): %zu masters killed (SIGKILL) under 3 reader threads; %lld reads, %lld memories checked "
              "byte-identical, %lld failed, %lld differed; longest read %.2f s\n",
              faults.size(), static_cast<long long>(reads.load()), static_cast<long long>(checked.load()),
              static_cast<long long>(failed.load()), static_cast<long long>(differed.load()), longest);
  for (const Fault& f : faults) {
    EXPECT_GT(f.cluster_promoted_s, 0) << "the replica of " << f.port << " never became master";
    EXPECT_LT(f.client_recovered_s, 15.0);
    std::printf("  master :%d killed: replica promoted after %.2f s, its keys read again after %.2f s\n", f.port,
                f.cluster_promoted_s, f.client_recovered_s);
  }
}

// ---- fault (b): a slot range is lost for good ------------------------------------------------------------

TEST(RedisClusterFault, LostSlotRangeFailsClearlyOthersKeepWorking) {
  test::RedisTestCluster cluster;
  test::TempDir tmp;
  const std::string dir = tmp.file("bank");
  make_random_bank(dir, 20, 10);  // 200 records
  const int64_t n = 200;
  const std::string name = "lost";
  ASSERT_TRUE(push_bank(dir, cluster.uri(name)).replicated);
  auto local = MemoryBank::open(dir, nullptr, false);
  const int budget_ms = 3000;
  auto remote = open_bank_for_reading(cluster.uri(name, "retry_ms=" + std::to_string(budget_ms)), nullptr, tmp.file("cache"));

  const auto [master, replica] = master_with_replica(cluster, cluster.port(0), {});
  ASSERT_GT(master.port, 0);
  const std::vector<int64_t> lost = ids_served_by(master, name, n);
  std::vector<int64_t> kept;
  for (int64_t id = 0; id < n; ++id)
    if (std::find(lost.begin(), lost.end(), id) == lost.end()) kept.push_back(id);
  ASSERT_GE(lost.size(), 2u);
  ASSERT_GE(kept.size(), 10u);
  cluster.kill_node(replica.port);  // the replica first, so that it cannot take over
  cluster.kill_node(master.port);

  // Reads of the lost range: one clear error each, after the retry budget, never a hang.
  std::vector<double> fail_s;
  std::string first_error;
  for (const int64_t id : {lost[0], lost[lost.size() / 2]}) {
    const auto t0 = Clock::now();
    const std::string e = error_of([&] { remote->read(id); });
    fail_s.push_back(since(t0));
    if (first_error.empty()) first_error = e;
    EXPECT_NE(e.find("bank " + cluster.uri(name, "retry_ms=" + std::to_string(budget_ms)) + ": cannot read record " +
                     std::to_string(id)),
              std::string::npos)
        << e;
    EXPECT_NE(e.find("GET '" + RemoteBankKeys{name}.record(id) + "' on 127.0.0.1:" + std::to_string(master.port)),
              std::string::npos)
        << e;
    EXPECT_NE(e.find("gave up after"), std::string::npos) << e;
    EXPECT_GE(fail_s.back(), budget_ms / 1000.0 * 0.5) << e;
    EXPECT_LT(fail_s.back(), budget_ms / 1000.0 + 3.0) << e;
  }
  // A chunk that mixes both fails as a whole (no partial answers).
  EXPECT_THROW(remote->read_many({kept[0], lost[1], kept[1]}), Error);
  // The rest keeps answering, at once and correctly.
  int64_t checked = 0;
  double slowest = 0;
  for (size_t i = 0; i + 5 <= kept.size(); i += 5) {
    const std::vector<int64_t> ids(kept.begin() + int64_t(i), kept.begin() + int64_t(i) + 5);
    const auto t0 = Clock::now();
    const std::vector<ExplicitMemory> got = remote->read_many(ids);
    slowest = std::max(slowest, since(t0));
    for (size_t k = 0; k < ids.size(); ++k) {
      const ExplicitMemory w = local->read(ids[k]);
      EXPECT_EQ(got[k].keys, w.keys);
      EXPECT_EQ(got[k].values, w.values);
      ++checked;
    }
  }
  EXPECT_LT(slowest, 1.0);
  std::printf("fault (b): master :%d and its replica :%d killed; %zu of %lld records lost, reads of them failed after "
              "%.2f s and %.2f s (budget %d ms); %lld other records read identical, slowest chunk %.3f s\n",
              master.port, replica.port, lost.size(), static_cast<long long>(n), fail_s[0], fail_s[1], budget_ms,
              static_cast<long long>(checked), slowest);
  std::printf("  the error: %s\n", first_error.c_str());
}

// ---- (c): several servers share one bank in the cluster -------------------------------------------------------

const Model& rt_model() {
  static const std::unique_ptr<Model> model = Model::load(kData + "/test-rt.gguf");
  return *model;
}

void build_rt_bank(const std::string& dir) {
  const std::vector<Document> docs = {
      {"aardvark", "Aardvarks", "test", "Aardvarks amble around Amsterdam every April afternoon, eating ants."},
      {"bluebird", "Bluebirds", "test", "Bluebirds build beautiful burrows beside Brussels and Bruges."},
      {"cheetah", "Cheetahs", "test", "Cheetahs chase chickens across Chile in chilly December evenings."},
      {"dolphin", "Dolphins", "test", "Dolphins dive deep near Dover during dark December dawns."},
      {"elephant", "Elephants", "test", "Elephants enjoy evening walks in Estonia, eating elderberries."},
  };
  const Model& model = rt_model();
  auto bank = MemoryBank::create(dir, model, "bf16", "bf16");
  std::vector<std::vector<ReferenceText>> refs;
  for (const Document& d : docs) refs.push_back(split_into_references(d, *model.tokenizer(), model.config().memory.reference_length));
  bank->add_references(docs, refs);
  ThreadPool pool(1);
  MemoryWriter writer(model, &pool);
  int64_t id = 0;
  for (const auto& rs : refs)
    for (const ReferenceText& r : rs) bank->append(writer.write(r.tokens, id++));
  bank->flush();
}

struct Served {
  test::ChildProcess child;
  int port = -1;
  std::string log;
};

Served serve(const std::vector<std::string>& extra) {
  std::vector<std::string> args = {kM3, "serve", "-m", kData + "/test-rt.gguf", "--port", "0", "-t", "1", "--cache-mb", "0"};
  args.insert(args.end(), extra.begin(), extra.end());
  Served s;
  s.child = test::spawn(args);
  for (int i = 0; i < 20; ++i) {
    const std::string line = test::read_line(s.child.out());
    s.log += line + "\n";
    std::smatch m;
    if (std::regex_search(line, m, std::regex(R"(listening on http://127\.0\.0\.1:(\d+))"))) {
      s.port = std::stoi(m[1]);
      break;
    }
    if (std::feof(s.child.out())) break;
  }
  return s;
}

json complete(int port, const std::string& prompt) {
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(120, 0);
  const json req = {{"prompt", prompt}, {"max_tokens", 24}, {"temperature", 0}, {"ignore_eos", true}};
  auto r = c.Post("/v1/completions", req.dump(), "application/json");
  if (!r) return json{{"error", "no response"}};
  return json::parse(r->body, nullptr, false);
}

TEST(RedisClusterServe, TwoServersOnTheClusterAnswerLikeOneOnTheLocalBank) {
  test::RedisTestCluster cluster;
  test::TempDir tmp;
  const std::string dir = tmp.file("bank");
  build_rt_bank(dir);
  const std::string uri = cluster.uri("animals");
  const test::RunResult pushed = test::run(kM3 + " bank push " + dir + " " + uri);
  ASSERT_EQ(pushed.exit_code, 0) << pushed.out;

  // Memories are read from the cluster on every chunk: no memory cache (--cache-mb 0).
  Served local = serve({"--bank", dir});
  Served a = serve({"--bank", uri, "--bank-cache", tmp.file("cache-a")});
  Served b = serve({"--bank", uri, "--bank-cache", tmp.file("cache-b")});
  ASSERT_GT(local.port, 0) << local.log;
  ASSERT_GT(a.port, 0) << a.log;
  ASSERT_GT(b.port, 0) << b.log;
  EXPECT_NE(a.log.find("memories from " + uri), std::string::npos) << a.log;
  EXPECT_NE(a.log.find("2 fetched"), std::string::npos) << a.log;

  // Prompts of several 64-token chunks, so that several chunks read memories. (Each prompt is
  // sent once per server: a server reuses the chunks of a prompt it has seen, reading nothing.)
  auto prompt = [](const std::string& lead) {
    std::string p = lead;
    for (int i = 0; i < 6; ++i) p += " Tell me about the cheetahs that chase chickens across Chile, and the dolphins near Dover.";
    return p;
  };
  auto expect_same = [&](const json& want, const std::string& p, const char* when) {
    ASSERT_TRUE(want.contains("choices")) << want.dump();
    ASSERT_GE(want["memories"].size(), 2u) << want.dump();
    EXPECT_EQ(want["memory_mode"], "memory");
    for (const Served* s : {&a, &b}) {
      const json got = complete(s->port, p);
      ASSERT_TRUE(got.contains("choices")) << when << ": " << got.dump();
      EXPECT_EQ(got["choices"][0]["text"], want["choices"][0]["text"]) << when;
      EXPECT_EQ(got["memories"], want["memories"]) << when;
    }
  };
  const std::string p1 = prompt("First:"), p2 = prompt("Second:");
  expect_same(complete(local.port, p1), p1, "before any fault");

  // A master that serves a memory the next answer reads dies; the servers' reads wait for its
  // replica and answer the same.
  const json want2 = complete(local.port, p2);
  ASSERT_TRUE(want2.contains("memories")) << want2.dump();
  int64_t ref = -1;
  for (const json& ch : want2["memories"])
    for (const json& r : ch["references"]) ref = r["id"].get<int64_t>();
  ASSERT_GE(ref, 0) << want2.dump();
  const int slot = redis_key_slot(RemoteBankKeys{"animals"}.record(ref));
  test::RedisTestCluster::Node master;
  for (const auto& nd : cluster.nodes(cluster.port(0)))
    if (nd.master && test::RedisTestCluster::owns(nd, slot)) master = nd;
  ASSERT_GT(master.port, 0);
  cluster.kill_node(master.port);
  const auto t0 = Clock::now();
  expect_same(want2, p2, "after a master was killed");
  const double took = since(t0);
  EXPECT_GE(took, 1.0) << "the answers did not wait for a failover: did they read the dead master's memories?";
  EXPECT_LT(took, 20.0);

  for (Served* s : {&local, &a, &b}) {
    s->child.send_signal(SIGTERM);
    EXPECT_EQ(s->child.wait_exit(), 0);
  }
  std::printf("fault (c): 2 servers on %s and 1 on the local bank answered identically; the master :%d serving "
              "memory %lld killed (SIGKILL): both servers gave the local server's answer %.2f s later\n",
              uri.c_str(), master.port, static_cast<long long>(ref), took);
}

}  // namespace
}  // namespace m3
