// SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0)
//
// meshlimit: token-bucket limits on TCP connect(), per client network namespace and
// destination. Userspace writes SETTINGS (one entry per limited destination); the programs
// keep one bucket per {client netns, destination} in the LRU map STATE and refuse connect()
// (EPERM) when the bucket is empty.
//
// The refill is the `interval` mode of the userspace engine, exactly: `tokens_per_fill` for
// every whole `fill_interval` since the last top-up, the remainder carried, capped at
// `max_tokens`; a new bucket starts full. The check-and-take is one compare-and-swap (see
// struct bucket_state), so concurrent connects on many CPUs never take more tokens than exist.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1

#define VERDICT_REJECT 0
#define VERDICT_ALLOW 1

// Keep in step with `src/shared.rs`.
struct dest_key {
	__u32 addr[4]; // network byte order; IPv4 as v4-mapped (::ffff:a.b.c.d)
	__u16 port;    // host byte order
	__u16 family;  // AF_INET (also for v4-mapped IPv6) or AF_INET6
};

struct bucket_key {
	__u64 netns_cookie;
	struct dest_key dest;
	__u32 _pad; // explicit, so the key's bytes are always defined
};

struct settings {
	__u64 max_tokens;
	__u64 tokens_per_fill;
	__u64 fill_interval_ns;
};

// The kernel refuses bpf_spin_lock in LRU maps, so a bucket is updated with one
// compare-and-swap on `consumed`. Interval refill makes that possible: the last top-up is
// always the latest phase boundary `origin + n * fill_interval` at or before the check, so
// n = (now - origin) / fill_interval is a function of time alone, and the tokens are
//     min(max_tokens, initial_tokens + n * tokens_per_fill - consumed)
// where `consumed` counts tokens taken plus tokens lost to the cap. Everything but
// `consumed` is fixed when the bucket is made; a settings change seals the bucket and
// replaces it with one that starts from the tokens it held.
struct bucket_state {
	__u64 origin_ns;
	struct settings settings; // the settings the bucket was made with
	__u64 initial_tokens;
	__u64 consumed; // the one mutable word; SEALED while being replaced
};

#define SEALED (1ULL << 63)
#define CAS_ATTEMPTS 8

// The range served exactly: max_tokens <= 2^40 and tokens_per_fill <= 2^32 (the engine's
// limits, asserted where userspace builds the settings), any fill_interval_ns >= 1.
//
// Why nothing overflows: a bucket is re-based (sealed and replaced, as on a settings change,
// with the same settings) at its first check REBASE_INTERVALS or more intervals after its
// origin. So every stored bucket was last written fewer than REBASE_INTERVALS intervals after
// its origin, and consumed <= initial_tokens + (REBASE_INTERVALS - 1) * tokens_per_fill
// < 2^40 + 2^52. A product n * tokens_per_fill is formed only for n < REBASE_INTERVALS
// (< 2^52) or n <= (max_tokens + consumed) / tokens_per_fill (<= 2^40 + 2^53); beyond that the
// bucket is full whatever n is. Every sum stays below 2^55, far from SEALED.
#define REBASE_INTERVALS (1ULL << 20)

struct dest_counters {
	__u64 allowed;
	__u64 limited;
};

enum counter {
	COUNTER_ALLOWED = 0,
	COUNTER_LIMITED = 1,
	COUNTER_UNTRACKED = 2,
	COUNTER_ERRORS = 3,
	COUNTER_MAX = 4,
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct dest_key);
	__type(value, struct settings);
} SETTINGS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct bucket_key);
	__type(value, struct bucket_state);
} STATE SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} COUNTERS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct dest_key);
	__type(value, struct dest_counters);
} DEST_COUNTERS SEC(".maps");

// Buckets driven by the sched_cls copy below (BPF_PROG_TEST_RUN, injected time); never
// touched by real connects.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, struct bucket_key);
	__type(value, struct bucket_state);
} TEST_STATE SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *value = bpf_map_lookup_elem(&COUNTERS, &which);
	if (value)
		__sync_fetch_and_add(value, 1);
}

static __always_inline __u64 intervals_since(const struct bucket_state *state, __u64 now)
{
	return now > state->origin_ns ? (now - state->origin_ns) / state->settings.fill_interval_ns : 0;
}

// Tokens the bucket holds `n` intervals after its origin, given `consumed`.
static __always_inline __u64 tokens_at(const struct bucket_state *state, __u64 n, __u64 consumed)
{
	const struct settings *s = &state->settings;
	// n * tokens_per_fill > max_tokens + consumed: full, and the product is not formed.
	if (n >= REBASE_INTERVALS && n > (s->max_tokens + consumed) / s->tokens_per_fill)
		return s->max_tokens;
	__u64 earned = state->initial_tokens + n * s->tokens_per_fill;
	// Only a clock reading older than a concurrent update's can make this negative: such a
	// check sees the refill late (a rejection), never early.
	__u64 tokens = earned > consumed ? earned - consumed : 0;
	return tokens < state->settings.max_tokens ? tokens : state->settings.max_tokens;
}

static __always_inline int same_settings(const struct settings *a, const struct settings *b)
{
	return a->max_tokens == b->max_tokens && a->tokens_per_fill == b->tokens_per_fill &&
	       a->fill_interval_ns == b->fill_interval_ns;
}

#define ADMITTED 1
#define REJECTED 0
#define UNTRACKED -1
#define INVALID -2
#define CONTENDED -3

// Takes one token from the bucket `key` of `state_map`, creating it full if missing.
static __always_inline int admit(void *state_map, const struct bucket_key *key,
				 const struct settings *s, __u64 now)
{
	if (s->fill_interval_ns == 0 || s->tokens_per_fill == 0 || s->max_tokens == 0)
		return INVALID;
	for (int attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
		struct bucket_state *state = bpf_map_lookup_elem(state_map, key);
		if (!state) {
			struct bucket_state fresh = {
				.origin_ns = now,
				.settings = *s,
				.initial_tokens = s->max_tokens,
			};
			// Another CPU may create it first (EEXIST): then we share theirs.
			bpf_map_update_elem(state_map, key, &fresh, BPF_NOEXIST);
			state = bpf_map_lookup_elem(state_map, key);
			if (!state)
				return UNTRACKED;
		}
		__u64 consumed = *(volatile __u64 *)&state->consumed; // one 8-byte load: atomic
		if (consumed & SEALED)
			continue; // being replaced by another CPU: look it up again
		__u64 n = intervals_since(state, now);
		__u64 tokens = tokens_at(state, n, consumed);

		if (!same_settings(&state->settings, s) || n >= REBASE_INTERVALS) {
			// Seal, then replace with a bucket of the new settings holding the same tokens
			// (clamped), whose origin is the last top-up: so a settings change, and a re-base
			// that keeps the numbers small. A take that lands before the seal is in `tokens`;
			// none lands after.
			if (__sync_val_compare_and_swap(&state->consumed, consumed, consumed | SEALED) != consumed)
				continue;
			// Intervals keep counting from the last top-up, in the new settings.
			struct bucket_state next = {
				.origin_ns = state->origin_ns + n * state->settings.fill_interval_ns,
				.settings = *s,
				.initial_tokens = tokens < s->max_tokens ? tokens : s->max_tokens,
			};
			if (bpf_map_update_elem(state_map, key, &next, BPF_ANY) != 0)
				return UNTRACKED;
			continue;
		}

		// Tokens lost to the cap count as consumed, so the cap holds as time goes on.
		__u64 earned = state->initial_tokens + n * s->tokens_per_fill;
		__u64 floor = earned > s->max_tokens ? earned - s->max_tokens : 0;
		__u64 next = consumed > floor ? consumed : floor;
		if (tokens == 0) {
			if (next == consumed ||
			    __sync_val_compare_and_swap(&state->consumed, consumed, next) == consumed)
				return REJECTED;
			continue;
		}
		if (__sync_val_compare_and_swap(&state->consumed, consumed, next + 1) == consumed)
			return ADMITTED;
	}
	return CONTENDED;
}

static __always_inline int limit_connect(struct bpf_sock_addr *ctx, struct dest_key *dest)
{
	const struct settings *s = bpf_map_lookup_elem(&SETTINGS, dest);
	if (!s)
		return VERDICT_ALLOW;

	struct bucket_key key = {};
	key.netns_cookie = bpf_get_netns_cookie(ctx);
	key.dest = *dest;
	struct settings copy = *s;
	int taken = admit(&STATE, &key, &copy, bpf_ktime_get_ns());

	struct dest_counters *per_dest = bpf_map_lookup_elem(&DEST_COUNTERS, dest);
	if (taken == ADMITTED) {
		count(COUNTER_ALLOWED);
		if (per_dest)
			__sync_fetch_and_add(&per_dest->allowed, 1);
		return VERDICT_ALLOW;
	}
	if (taken == REJECTED) {
		count(COUNTER_LIMITED);
		if (per_dest)
			__sync_fetch_and_add(&per_dest->limited, 1);
		return VERDICT_REJECT;
	}
	if (taken == UNTRACKED) {
		count(COUNTER_UNTRACKED);
		return VERDICT_ALLOW;
	}
	// INVALID settings fail open; CONTENDED (no compare-and-swap won in CAS_ATTEMPTS tries)
	// fails closed, so that a token is never taken twice.
	count(COUNTER_ERRORS);
	return taken == CONTENDED ? VERDICT_REJECT : VERDICT_ALLOW;
}

// connect() to the unspecified address reaches a local listener: the kernel's route lookup
// (ip_route_output_key_hash_rcu) takes a zero destination as the socket's bound source
// address, or 127.0.0.1 when it has none, and sends it over loopback. The limit is that of
// the address the connection really reaches, so `0.0.0.0:P` cannot bypass `127.0.0.1:P`.
#define LOOPBACK_V4 0x7f000001

static __always_inline __u32 unspecified_v4_destination(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	__u32 source = sk ? sk->src_ip4 : 0;
	return source ? source : bpf_htonl(LOOPBACK_V4);
}

SEC("cgroup/connect4")
int connect4(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_STREAM)
		return VERDICT_ALLOW;
	struct dest_key dest = {};
	dest.addr[2] = bpf_htonl(0xffff);
	dest.addr[3] = ctx->user_ip4 ? ctx->user_ip4 : unspecified_v4_destination(ctx);
	dest.port = bpf_ntohs((__u16)ctx->user_port);
	dest.family = AF_INET;
	return limit_connect(ctx, &dest);
}

SEC("cgroup/connect6")
int connect6(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_STREAM)
		return VERDICT_ALLOW;
	struct dest_key dest = {};
	dest.addr[0] = ctx->user_ip6[0];
	dest.addr[1] = ctx->user_ip6[1];
	dest.addr[2] = ctx->user_ip6[2];
	dest.addr[3] = ctx->user_ip6[3];
	dest.port = bpf_ntohs((__u16)ctx->user_port);
	// ::ffff:a.b.c.d is an IPv4 destination: it shares the bucket connect4 uses.
	int mapped = dest.addr[0] == 0 && dest.addr[1] == 0 && dest.addr[2] == bpf_htonl(0xffff);
	if (mapped && dest.addr[3] == 0) {
		// ::ffff:0.0.0.0 goes to tcp_v4_connect as 0.0.0.0: routed as connect4's is.
		dest.addr[3] = unspecified_v4_destination(ctx);
	} else if (!mapped && !dest.addr[0] && !dest.addr[1] && !dest.addr[2] && !dest.addr[3]) {
		// tcp_v6_connect() turns `::` into ::1, or into 127.0.0.1 when the socket is
		// bound to a v4-mapped address.
		struct bpf_sock *sk = ctx->sk;
		if (sk && sk->src_ip6[0] == 0 && sk->src_ip6[1] == 0 &&
		    sk->src_ip6[2] == bpf_htonl(0xffff)) {
			dest.addr[2] = bpf_htonl(0xffff);
			dest.addr[3] = bpf_htonl(LOOPBACK_V4);
			mapped = 1;
		} else {
			dest.addr[3] = bpf_htonl(1);
		}
	}
	dest.family = mapped ? AF_INET : AF_INET6;
	return limit_connect(ctx, &dest);
}

// The token logic above, driven with injected time for BPF_PROG_TEST_RUN. Keep in step with
// `src/arithmetic.rs`. Returns 1 admitted, 0 rejected, or 2 - admit() (3, 4, 5) on an error.
struct test_input {
	__u8 ethernet[14]; // test_run treats the first bytes as an Ethernet header
	__u8 _pad[2];
	__u64 now_ns;
	__u64 bucket;
	struct settings settings;
};

SEC("classifier")
int arithmetic(struct __sk_buff *skb)
{
	struct test_input in;
	if (bpf_skb_load_bytes(skb, 0, &in, sizeof(in)) < 0)
		return 100;
	struct bucket_key key = {};
	key.netns_cookie = in.bucket;
	int taken = admit(&TEST_STATE, &key, &in.settings, in.now_ns);
	return taken >= 0 ? taken : 2 - taken;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
