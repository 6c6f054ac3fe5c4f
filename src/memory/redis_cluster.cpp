// The Redis Cluster client (m3/redis_cluster.h): slot map, redirections, retries, pipelining.
#include "m3/redis_cluster.h"

#include <hiredis/hiredis.h>
#include <sys/time.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <thread>

#include "m3/error.h"

namespace m3 {

namespace {

using Clock = std::chrono::steady_clock;
constexpr int kSlots = 16384;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

timeval tv_ms(int ms) {
  timeval tv{};
  tv.tv_sec = ms / 1000;
  tv.tv_usec = (ms % 1000) * 1000;
  return tv;
}

RedisValue copy_reply(const redisReply* r) {
  RedisValue v;
  switch (r->type) {
    case REDIS_REPLY_STRING:
      v.type = RedisValue::Type::String;
      v.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_STATUS:
      v.type = RedisValue::Type::Status;
      v.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_ERROR:
      v.type = RedisValue::Type::Error;
      v.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_INTEGER:
      v.type = RedisValue::Type::Integer;
      v.integer = r->integer;
      break;
    case REDIS_REPLY_ARRAY:
      v.type = RedisValue::Type::Array;
      for (size_t i = 0; i < r->elements; ++i) v.elements.push_back(copy_reply(r->element[i]));
      break;
    default:
      v.type = RedisValue::Type::Nil;
  }
  return v;
}

struct ReplyFree {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using ReplyPtr = std::unique_ptr<redisReply, ReplyFree>;

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

// Error replies after which the same command may succeed once the cluster has settled.
bool retryable_error(std::string_view e) {
  for (const char* p : {"CLUSTERDOWN", "TRYAGAIN", "LOADING", "MASTERDOWN", "READONLY"})
    if (starts_with(e, p)) return true;
  return false;
}

// "host:port" (the host may itself hold colons: IPv6); an empty host is `fallback_host`.
bool parse_endpoint(std::string_view s, const std::string& fallback_host, RedisEndpoint* out) {
  const size_t colon = s.rfind(':');
  if (colon == std::string_view::npos) return false;
  int port = 0;
  const char* b = s.data() + colon + 1;
  const char* e = s.data() + s.size();
  if (b == e || std::from_chars(b, e, port).ptr != e || port <= 0 || port > 65535) return false;
  out->host = colon == 0 ? fallback_host : std::string(s.substr(0, colon));
  out->port = port;
  return true;
}

// A hiredis connection error, said plainly.
std::string io_error(const redisContext* c, int timeout_ms) {
  const std::string e = c->errstr;
  if (e.find("Resource temporarily unavailable") != std::string::npos || e.find("timed out") != std::string::npos)
    return "no reply within " + std::to_string(timeout_ms) + " ms (timeout)";
  return e.empty() ? "connection error" : e;
}

}  // namespace

uint16_t redis_crc16(std::string_view data) {
  // CRC16-XMODEM, bit by bit: polynomial 0x1021, initial value 0, no reflection, no final xor.
  uint16_t crc = 0;
  for (const unsigned char byte : data) {
    crc ^= uint16_t(byte) << 8;
    for (int bit = 0; bit < 8; ++bit) crc = (crc & 0x8000) ? uint16_t((crc << 1) ^ 0x1021) : uint16_t(crc << 1);
  }
  return crc;
}

int redis_key_slot(std::string_view key) {
  // Hash tag: from the first '{' to the first '}' after it, when what is between is not empty.
  const size_t open = key.find('{');
  if (open != std::string_view::npos) {
    const size_t close = key.find('}', open + 1);
    if (close != std::string_view::npos && close > open + 1) key = key.substr(open + 1, close - open - 1);
  }
  return redis_crc16(key) % kSlots;
}

std::vector<RedisEndpoint> parse_redis_endpoints(const std::string& list) {
  std::vector<RedisEndpoint> out;
  size_t pos = 0;
  while (pos <= list.size()) {
    const size_t comma = std::min(list.find(',', pos), list.size());
    const std::string item = list.substr(pos, comma - pos);
    RedisEndpoint ep;
    if (item.empty() || !parse_endpoint(item, "", &ep) || ep.host.empty())
      throw Error("redis cluster: '" + item + "' in '" + list + "' is not host:port");
    out.push_back(ep);
    pos = comma + 1;
  }
  return out;
}

// ---- nodes and their connection pools ---------------------------------------------------------------

struct RedisCluster::Node {
  RedisEndpoint ep;
  std::mutex mu;
  std::vector<redisContext*> idle;
  ~Node() {
    for (redisContext* c : idle) redisFree(c);
  }
  // After an error the node's other idle connections are probably dead too (a killed process, a
  // failover): close them rather than find out one by one.
  void drop_idle() {
    std::vector<redisContext*> old;
    {
      std::lock_guard<std::mutex> lock(mu);
      old.swap(idle);
    }
    for (redisContext* c : old) redisFree(c);
  }
};

struct RedisCluster::State {
  std::vector<RedisEndpoint> seeds;
  mutable std::shared_mutex mu;               // guards nodes (append only), slot_node, replicas
  std::vector<std::unique_ptr<Node>> nodes;   // a node keeps its index for the client's life
  std::array<int, kSlots> slot_node{};        // index into nodes, -1: no owner known
  std::map<int, int> replicas;                // master index → replicas listed
  std::mutex refresh_mu;
  Clock::time_point last_refresh{};
  std::atomic<uint64_t> commands{0}, moved{0}, asked{0}, retries{0}, refreshes{0}, connections{0};

  int node_index_locked(const RedisEndpoint& ep) {
    for (size_t i = 0; i < nodes.size(); ++i)
      if (nodes[i]->ep == ep) return int(i);
    nodes.push_back(std::make_unique<Node>());
    nodes.back()->ep = ep;
    return int(nodes.size() - 1);
  }
  int node_index(const RedisEndpoint& ep) {
    {
      std::shared_lock<std::shared_mutex> lock(mu);
      for (size_t i = 0; i < nodes.size(); ++i)
        if (nodes[i]->ep == ep) return int(i);
    }
    std::unique_lock<std::shared_mutex> lock(mu);
    return node_index_locked(ep);
  }
  Node* node(int i) const {
    std::shared_lock<std::shared_mutex> lock(mu);
    return nodes[size_t(i)].get();
  }
};

namespace {

redisContext* connect_node(const RedisEndpoint& ep, const RedisClusterOptions& o, std::string* err) {
  redisContext* c = redisConnectWithTimeout(ep.host.c_str(), ep.port, tv_ms(o.connect_timeout_ms));
  if (!c) {
    *err = "cannot allocate a connection";
    return nullptr;
  }
  if (c->err) {
    const std::string e = c->errstr;
    *err = e.find("timed out") != std::string::npos || e.find("temporarily") != std::string::npos
               ? "no connection within " + std::to_string(o.connect_timeout_ms) + " ms (timeout)"
               : e;
    redisFree(c);
    return nullptr;
  }
  redisSetTimeout(c, tv_ms(o.command_timeout_ms));
  return c;
}

}  // namespace

// ---- the client ---------------------------------------------------------------------------------

RedisCluster::RedisCluster(std::vector<RedisEndpoint> seeds, RedisClusterOptions options)
    : options_(options), state_(std::make_unique<State>()) {
  if (seeds.empty()) throw Error("redis cluster: no seed nodes given");
  state_->seeds = std::move(seeds);
  state_->slot_node.fill(-1);
  const auto t0 = Clock::now();
  int backoff = options_.backoff_first_ms;
  for (int attempt = 1;; ++attempt) {
    try {
      refresh();
      return;
    } catch (const Error& e) {
      if (seconds_since(t0) * 1000 + backoff > options_.retry_budget_ms)
        throw Error(std::string(e.what()) + "; gave up after " + std::to_string(seconds_since(t0)).substr(0, 4) + " s (" +
                    std::to_string(attempt) + " attempts)");
      std::this_thread::sleep_for(std::chrono::milliseconds(backoff));
      backoff = std::min(backoff * 2, options_.backoff_max_ms);
    }
  }
}

RedisCluster::~RedisCluster() = default;

void RedisCluster::refresh() {
  State& s = *state_;
  // Ask the nodes the map knows (masters first), then the seeds, until one answers.
  std::vector<RedisEndpoint> candidates;
  {
    std::shared_lock<std::shared_mutex> lock(s.mu);
    for (const auto& [master, n] : s.replicas) candidates.push_back(s.nodes[size_t(master)]->ep);
    for (const auto& n : s.nodes)
      if (std::find(candidates.begin(), candidates.end(), n->ep) == candidates.end()) candidates.push_back(n->ep);
  }
  for (const RedisEndpoint& ep : s.seeds)
    if (std::find(candidates.begin(), candidates.end(), ep) == candidates.end()) candidates.push_back(ep);

  std::string errors;
  for (const RedisEndpoint& ep : candidates) {
    std::string err;
    redisContext* c = connect_node(ep, options_, &err);
    if (!c) {
      errors += (errors.empty() ? "" : "; ") + ep.str() + ": " + err;
      continue;
    }
    ++s.connections;
    ReplyPtr r(static_cast<redisReply*>(redisCommand(c, "CLUSTER SLOTS")));
    if (!r) {
      errors += (errors.empty() ? "" : "; ") + ep.str() + ": " + io_error(c, options_.command_timeout_ms);
      redisFree(c);
      continue;
    }
    redisFree(c);
    if (r->type == REDIS_REPLY_ERROR) {
      errors += (errors.empty() ? "" : "; ") + ep.str() + ": " + std::string(r->str, r->len);
      continue;
    }
    if (r->type != REDIS_REPLY_ARRAY) {
      errors += (errors.empty() ? "" : "; ") + ep.str() + ": CLUSTER SLOTS gave no array";
      continue;
    }
    // Entries: [start, end, [host, port, id, ...] (master), [host, port, id, ...] (replica)...]
    std::vector<std::pair<std::pair<int, int>, std::pair<RedisEndpoint, int>>> ranges;
    bool ok = true;
    for (size_t i = 0; i < r->elements && ok; ++i) {
      const redisReply* e = r->element[i];
      ok = e->type == REDIS_REPLY_ARRAY && e->elements >= 3 && e->element[0]->type == REDIS_REPLY_INTEGER &&
           e->element[1]->type == REDIS_REPLY_INTEGER && e->element[2]->type == REDIS_REPLY_ARRAY &&
           e->element[2]->elements >= 2 && e->element[2]->element[0]->type == REDIS_REPLY_STRING &&
           e->element[2]->element[1]->type == REDIS_REPLY_INTEGER;
      if (!ok) break;
      const int lo = int(e->element[0]->integer), hi = int(e->element[1]->integer);
      ok = 0 <= lo && lo <= hi && hi < kSlots;
      RedisEndpoint m;
      m.host.assign(e->element[2]->element[0]->str, e->element[2]->element[0]->len);
      if (m.host.empty() || m.host == "?") m.host = ep.host;  // "the host you asked"
      m.port = int(e->element[2]->element[1]->integer);
      ranges.push_back({{lo, hi}, {m, int(e->elements) - 3}});
    }
    if (!ok) {
      errors += (errors.empty() ? "" : "; ") + ep.str() + ": CLUSTER SLOTS reply is malformed";
      continue;
    }
    std::unique_lock<std::shared_mutex> lock(s.mu);
    s.slot_node.fill(-1);
    s.replicas.clear();
    for (const auto& [range, master] : ranges) {
      const int idx = s.node_index_locked(master.first);
      for (int slot = range.first; slot <= range.second; ++slot) s.slot_node[size_t(slot)] = idx;
      s.replicas[idx] = std::max(s.replicas.count(idx) ? s.replicas[idx] : 0, master.second);
    }
    ++s.refreshes;
    s.last_refresh = Clock::now();
    return;
  }
  throw Error("redis cluster: no node answered CLUSTER SLOTS (" + errors + ")");
}

RedisEndpoint RedisCluster::slot_owner(int slot) const {
  std::shared_lock<std::shared_mutex> lock(state_->mu);
  const int idx = state_->slot_node[size_t(slot) % kSlots];
  return idx < 0 ? RedisEndpoint{} : state_->nodes[size_t(idx)]->ep;
}

std::vector<std::pair<RedisEndpoint, int>> RedisCluster::masters() const {
  std::shared_lock<std::shared_mutex> lock(state_->mu);
  std::vector<std::pair<RedisEndpoint, int>> out;
  for (const auto& [idx, n] : state_->replicas) out.push_back({state_->nodes[size_t(idx)]->ep, n});
  return out;
}

RedisClusterStats RedisCluster::stats() const {
  const State& s = *state_;
  return {s.commands.load(), s.moved.load(), s.asked.load(), s.retries.load(), s.refreshes.load(), s.connections.load()};
}

std::vector<RedisValue> RedisCluster::run(const std::vector<RedisCommand>& commands) {
  State& s = *state_;
  const auto t0 = Clock::now();
  std::vector<RedisValue> out(commands.size());
  s.commands += commands.size();

  // A command still to answer: where a redirection sends it (-1: the slot's owner in the map).
  struct Pending {
    size_t i;
    int node = -1;
    bool asking = false;
  };
  std::vector<Pending> pending;
  pending.reserve(commands.size());
  for (size_t i = 0; i < commands.size(); ++i) pending.push_back({i});

  int attempts = 0, backoff = options_.backoff_first_ms, redirect_rounds = 0;
  std::string last_error, last_node, refresh_error;
  size_t last_cmd = 0;
  auto note_failure = [&](const std::string& node, size_t cmd, const std::string& err) {
    last_node = node;
    last_cmd = cmd;
    last_error = err;
  };

  while (!pending.empty()) {
    ++attempts;
    bool failed = false, redirected = false;
    std::vector<Pending> next;

    // Route: node index → its commands, in order.
    std::map<int, std::vector<Pending>> by_node;
    {
      std::shared_lock<std::shared_mutex> lock(s.mu);
      for (const Pending& p : pending) {
        const int idx = p.node >= 0 ? p.node : s.slot_node[size_t(redis_key_slot(commands[p.i].key()))];
        if (idx < 0) {
          failed = true;
          note_failure("no node", p.i, "slot " + std::to_string(redis_key_slot(commands[p.i].key())) +
                                          " has no owner in the cluster's slot map");
          next.push_back({p.i});
          continue;
        }
        by_node[idx].push_back(p);
      }
    }

    // Send every node's commands before reading any reply.
    struct Batch {
      Node* node;
      redisContext* c;
      std::vector<Pending> items;
    };
    std::vector<Batch> batches;
    for (auto& [idx, items] : by_node) {
      Node* node = s.node(idx);
      redisContext* c = nullptr;
      {
        std::lock_guard<std::mutex> lock(node->mu);
        if (!node->idle.empty()) {
          c = node->idle.back();
          node->idle.pop_back();
        }
      }
      std::string err;
      if (!c) {
        c = connect_node(node->ep, options_, &err);
        if (c) ++s.connections;
      }
      bool ok = c != nullptr;
      std::vector<const char*> argv;
      std::vector<size_t> lens;
      for (size_t k = 0; ok && k < items.size(); ++k) {
        const RedisCommand& cmd = commands[items[k].i];
        if (items[k].asking) ok = redisAppendCommand(c, "ASKING") == REDIS_OK;
        argv.clear();
        lens.clear();
        for (const std::string_view a : cmd.argv) {
          argv.push_back(a.data());
          lens.push_back(a.size());
        }
        ok = ok && redisAppendCommandArgv(c, int(argv.size()), argv.data(), lens.data()) == REDIS_OK;
      }
      for (int done = 0; ok && !done;) ok = redisBufferWrite(c, &done) == REDIS_OK;
      if (!ok) {
        if (c) err = io_error(c, options_.command_timeout_ms);
        failed = true;
        note_failure(node->ep.str(), items.front().i, err);
        if (c) redisFree(c);
        node->drop_idle();
        for (const Pending& p : items) next.push_back({p.i});
        continue;
      }
      batches.push_back({node, c, std::move(items)});
    }

    // Read the replies, node by node, in order.
    for (Batch& b : batches) {
      size_t k = 0;
      bool io_failed = false;
      for (; k < b.items.size(); ++k) {
        const Pending& p = b.items[k];
        redisReply* raw = nullptr;
        if (p.asking) {
          if (redisGetReply(b.c, reinterpret_cast<void**>(&raw)) != REDIS_OK) {
            io_failed = true;
            break;
          }
          freeReplyObject(raw);  // +OK; if ASKING failed, the command's own reply says how
        }
        if (redisGetReply(b.c, reinterpret_cast<void**>(&raw)) != REDIS_OK) {
          io_failed = true;
          break;
        }
        ReplyPtr r(raw);
        if (r->type == REDIS_REPLY_ERROR) {
          const std::string_view e(r->str, r->len);
          const bool moved = starts_with(e, "MOVED "), ask = starts_with(e, "ASK ");
          if (moved || ask) {
            // "MOVED <slot> <host:port>"
            const size_t sp1 = e.find(' '), sp2 = e.find(' ', sp1 + 1);
            int slot = -1;
            RedisEndpoint to;
            if (sp2 != std::string_view::npos) std::from_chars(e.data() + sp1 + 1, e.data() + sp2, slot);
            if (slot < 0 || slot >= kSlots || !parse_endpoint(e.substr(sp2 + 1), b.node->ep.host, &to))
              throw Error("redis cluster: " + b.node->ep.str() + " sent a malformed redirection '" + std::string(e) + "'");
            const int idx = s.node_index(to);
            redirected = true;
            if (moved) {
              ++s.moved;
              std::unique_lock<std::shared_mutex> lock(s.mu);
              s.slot_node[size_t(slot)] = idx;  // the slot has a new owner
              next.push_back({p.i});
            } else {
              ++s.asked;
              next.push_back({p.i, idx, true});  // this key only, this time only
            }
            continue;
          }
          if (retryable_error(e)) {
            failed = true;
            note_failure(b.node->ep.str(), p.i, std::string(e));
            next.push_back({p.i});
            continue;
          }
        }
        out[p.i] = copy_reply(r.get());
      }
      if (io_failed) {
        failed = true;
        note_failure(b.node->ep.str(), b.items[k].i, io_error(b.c, options_.command_timeout_ms));
        for (; k < b.items.size(); ++k) next.push_back({b.items[k].i});
        redisFree(b.c);
        b.node->drop_idle();
      } else {
        std::lock_guard<std::mutex> lock(b.node->mu);
        b.node->idle.push_back(b.c);
      }
    }

    pending.swap(next);
    if (pending.empty()) break;
    // Redirections are followed at once, unless they go round in circles (a slot moving back
    // and forth): then they wait like failures do.
    redirect_rounds = redirected && !failed ? redirect_rounds + 1 : 0;
    if (!failed && redirect_rounds <= 8) continue;
    const double waited_ms = seconds_since(t0) * 1000;
    if (waited_ms + backoff > options_.retry_budget_ms) {
      const RedisCommand& cmd = commands[last_cmd];
      if (last_error.empty()) last_error = "redirected in circles";
      char took[32];
      std::snprintf(took, sizeof took, "%.1f", seconds_since(t0));
      throw Error("redis cluster: " + std::string(cmd.argv[0]) + " '" + std::string(cmd.key()) + "' on " + last_node +
                  " failed: " + last_error + (refresh_error.empty() ? "" : "; slot map: " + refresh_error) +
                  "; gave up after " + took + " s (" + std::to_string(attempts) +
                  " attempts, retry budget " + std::to_string(options_.retry_budget_ms) + " ms" +
                  (pending.size() > 1 ? ", " + std::to_string(pending.size() - 1) + " more commands unanswered" : "") +
                  ")");
    }
    ++s.retries;
    std::this_thread::sleep_for(std::chrono::milliseconds(backoff));
    backoff = std::min(backoff * 2, options_.backoff_max_ms);
    {
      // One refresh serves every thread that failed at about the same time.
      std::unique_lock<std::mutex> lock(s.refresh_mu);
      if (Clock::now() - s.last_refresh > std::chrono::milliseconds(std::max(1, options_.backoff_first_ms))) try {
          refresh();
          refresh_error.clear();
        } catch (const Error& e) {
          s.last_refresh = Clock::now();
          refresh_error = e.what();
        }
    }
  }
  return out;
}

RedisValue RedisCluster::run(const RedisCommand& command) { return std::move(run(std::vector<RedisCommand>{command})[0]); }

std::vector<RedisValue> RedisCluster::get_many(const std::vector<std::string>& keys) {
  std::vector<RedisCommand> cmds;
  cmds.reserve(keys.size());
  for (const std::string& k : keys) cmds.push_back({{"GET", k}});
  std::vector<RedisValue> out = run(cmds);
  for (size_t i = 0; i < out.size(); ++i)
    if (out[i].is_error()) throw Error("redis cluster: GET '" + keys[i] + "' failed: " + out[i].str);
  return out;
}

std::vector<std::pair<RedisEndpoint, RedisValue>> RedisCluster::run_on_masters(const std::vector<std::string>& argv) {
  const auto t0 = Clock::now();
  std::vector<const char*> args;
  std::vector<size_t> lens;
  for (const std::string& a : argv) {
    args.push_back(a.data());
    lens.push_back(a.size());
  }
  std::vector<std::pair<RedisEndpoint, RedisValue>> out;
  int backoff = options_.backoff_first_ms;
  for (int attempt = 1;; ++attempt) {
    out.clear();
    std::string failure;
    for (const auto& [ep, replicas] : masters()) {
      std::string err;
      redisContext* c = connect_node(ep, options_, &err);
      if (!c) {
        failure = ep.str() + ": " + err;
        break;
      }
      ++state_->connections;
      ReplyPtr r(static_cast<redisReply*>(redisCommandArgv(c, int(args.size()), args.data(), lens.data())));
      if (!r) {
        failure = ep.str() + ": " + io_error(c, options_.command_timeout_ms);
        redisFree(c);
        break;
      }
      redisFree(c);
      out.push_back({ep, copy_reply(r.get())});
    }
    if (failure.empty()) return out;
    if (seconds_since(t0) * 1000 + backoff > options_.retry_budget_ms)
      throw Error("redis cluster: " + argv[0] + " on every master failed: " + failure + "; gave up after " +
                  std::to_string(seconds_since(t0)).substr(0, 4) + " s (" + std::to_string(attempt) + " attempts)");
    ++state_->retries;
    std::this_thread::sleep_for(std::chrono::milliseconds(backoff));
    backoff = std::min(backoff * 2, options_.backoff_max_ms);
    try {
      refresh();
    } catch (const Error&) {
    }
  }
}

}  // namespace m3
