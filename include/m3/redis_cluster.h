// m3/redis_cluster.h — a small Redis Cluster client on hiredis's synchronous API: just what a
// bank's payload needs (single-key commands, pipelined), with the cluster routing that hiredis
// 0.14 lacks. It is not a general client: no pub/sub, no transactions, no multi-key commands.
//
// Routing (the Redis Cluster specification):
//   slot(key) = CRC16-XMODEM(key) mod 16384, where only the part between the first '{' and the
//   next '}' is hashed when that part is non-empty ("{user1}.a" and "{user1}.b" share a slot).
//   The slot map comes from CLUSTER SLOTS, asked of any reachable node (the seeds first).
//   -MOVED <slot> <host:port>: the slot has a new owner: the map is updated and the command sent
//   there. -ASK <slot> <host:port>: the slot is migrating and this key is already at the target:
//   ASKING + the command go to that node once, the map is left alone.
//
// Failures: a connection error or timeout (connect_timeout_ms, command_timeout_ms), CLUSTERDOWN,
// TRYAGAIN, LOADING, MASTERDOWN or READONLY (a master that became a replica) makes the client
// reload the slot map and retry, sleeping backoff_first_ms, then twice as long each time up to
// backoff_max_ms, until retry_budget_ms have passed since the call began; then it throws an
// m3::Error naming the node, the key, the last error, how long it tried and how many attempts it
// made. So no call hangs: each attempt is bounded by the timeouts and the attempts by the budget.
// Other error replies (WRONGTYPE, ...) are returned to the caller as RedisValue errors.
//
// Pipelining: run() groups a batch of commands by node, writes every node's commands before it
// reads any reply, and reads each node's replies in order: one round trip per node for the whole
// batch, the nodes served in parallel.
//
// Thread safety: every member may be called concurrently. Connections are pooled per node; a
// call takes one per node it needs and returns it (or closes it after an error).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace m3 {

struct RedisEndpoint {
  std::string host;
  int port = 0;
  std::string str() const { return host + ":" + std::to_string(port); }
  bool operator==(const RedisEndpoint&) const = default;
};

struct RedisClusterOptions {
  int connect_timeout_ms = 1000;
  int command_timeout_ms = 2000;
  int retry_budget_ms = 20000;  // per call; above a failover's duration (about 2 × cluster-node-timeout)
  int backoff_first_ms = 25;
  int backoff_max_ms = 500;    // short enough that a read resumes soon after a failover
};

// A reply, copied out of hiredis.
struct RedisValue {
  enum class Type { Nil, String, Integer, Status, Error, Array };
  Type type = Type::Nil;
  std::string str;  // String, Status, Error
  long long integer = 0;
  std::vector<RedisValue> elements;
  bool is_error() const { return type == Type::Error; }
  bool is_nil() const { return type == Type::Nil; }
};

// One single-key command: argv[key_index] is its key. The views must outlive the call (values
// are not copied on their way to the socket).
struct RedisCommand {
  std::vector<std::string_view> argv;
  size_t key_index = 1;
  std::string_view key() const { return argv[key_index]; }
};

struct RedisClusterStats {
  uint64_t commands = 0;
  uint64_t moved = 0;          // -MOVED redirections followed
  uint64_t asked = 0;          // -ASK redirections followed
  uint64_t retries = 0;        // backoff rounds after connection errors, timeouts, CLUSTERDOWN, ...
  uint64_t refreshes = 0;      // slot maps loaded
  uint64_t connections = 0;    // connections opened
};

// CRC16-XMODEM (polynomial 0x1021, initial value 0), as the cluster specification uses:
// crc16("123456789") = 0x31C3.
uint16_t redis_crc16(std::string_view data);
// The key's slot, 0..16383, with the {hash tag} rule.
int redis_key_slot(std::string_view key);

// "host:port[,host:port...]" → endpoints. Throws on a malformed list or port.
std::vector<RedisEndpoint> parse_redis_endpoints(const std::string& list);

class RedisCluster {
 public:
  // Loads the slot map from the first seed that answers. Throws when none does within the retry
  // budget, or when the node is not in cluster mode.
  RedisCluster(std::vector<RedisEndpoint> seeds, RedisClusterOptions options = {});
  ~RedisCluster();
  RedisCluster(const RedisCluster&) = delete;
  RedisCluster& operator=(const RedisCluster&) = delete;

  // Runs the commands (pipelined, see above) and returns their replies in order.
  std::vector<RedisValue> run(const std::vector<RedisCommand>& commands);
  RedisValue run(const RedisCommand& command);
  // The values of `keys` (GET, pipelined); a missing key gives a Nil value. Throws on any error
  // reply.
  std::vector<RedisValue> get_many(const std::vector<std::string>& keys);

  // A command without a key, sent to every master the map names (INFO, WAIT, DBSIZE, ...);
  // replies by master. Connection failures are retried as above.
  std::vector<std::pair<RedisEndpoint, RedisValue>> run_on_masters(const std::vector<std::string>& argv);

  // Reloads the slot map now (the client also does this by itself after errors).
  void refresh();
  // The master that serves `slot` in the client's current map (no network).
  RedisEndpoint slot_owner(int slot) const;
  // The masters and how many replicas CLUSTER SLOTS lists for each.
  std::vector<std::pair<RedisEndpoint, int>> masters() const;
  RedisClusterStats stats() const;
  const RedisClusterOptions& options() const { return options_; }

 private:
  struct Node;
  struct State;
  RedisClusterOptions options_;
  std::unique_ptr<State> state_;
};

}  // namespace m3
