-- wrk script for tests/bench/webhook_latency.sh: POSTs a GitLab push payload to
-- /hooks/gitlab/<id> at a fixed rate, each request with its own Idempotency-Key.
--
--   wrk -t T -c C -d S -s webhook_latency.lua URL -- RATE_PER_THREAD BODY_FILE TOKEN RUN_ID
--
-- Debian's wrk has no rate limit of its own: each thread keeps an absolute
-- schedule (one slot every 1000/RATE_PER_THREAD ms, read from CLOCK_MONOTONIC
-- through LuaJIT's ffi) and delay() holds each connection until the next free
-- slot. Late slots are sent at once (no catching up is skipped), so the offered
-- load stays RATE per second even when answers slow down. wrk measures latency
-- from the moment a request is written, after its delay.
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } slipway_timespec;
int clock_gettime(int clk_id, slipway_timespec *ts);
]]
local ts = ffi.new("slipway_timespec")
local function now_ms()
	ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
	return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local count = 0
function setup(thread)
	count = count + 1
	thread:set("thread_id", count)
end

function init(args)
	local rate = tonumber(args[1])
	local f = assert(io.open(args[2], "rb"))
	wrk.body = f:read("*a")
	f:close()
	wrk.method = "POST"
	wrk.headers["Content-Type"] = "application/json"
	wrk.headers["X-Gitlab-Event"] = "Push Hook"
	wrk.headers["X-Gitlab-Token"] = args[3]
	run_id = args[4]
	interval = 1000 / rate
	next_at = nil
	seq = 0
end

function delay()
	local now = now_ms()
	if not next_at then
		next_at = now + (thread_id - 1) * interval / 4 -- threads out of phase
	end
	local wait = next_at - now
	next_at = next_at + interval
	if wait <= 0 then
		return 0
	end
	return math.floor(wait + 0.5)
end

function request()
	seq = seq + 1
	wrk.headers["Idempotency-Key"] = string.format("%s-%d-%d", run_id, thread_id, seq)
	return wrk.format()
end

function done(summary, latency, requests)
	local ok = summary.requests - summary.errors.status
	io.write(string.format(
		"RESULT requests=%d ok=%d non2xx=%d connect=%d read=%d write=%d timeout=%d " ..
		"seconds=%.2f p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d mean_us=%.0f\n",
		summary.requests, ok, summary.errors.status, summary.errors.connect,
		summary.errors.read, summary.errors.write, summary.errors.timeout,
		summary.duration / 1e6, latency:percentile(50), latency:percentile(90),
		latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean))
end
