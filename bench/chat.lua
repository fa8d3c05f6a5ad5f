-- wrk script for bench/run.py: one chat completion POST, the same bytes for every target.
-- The key comes from $QG_BENCH_KEY (the mock and the pass-through ignore it; it is sent
-- anyway so every target reads the same request). done() prints one JSON line with
-- exact percentiles in microseconds, which run.py parses instead of wrk's rounded text.
--
-- With $QG_BENCH_RATE (req/s, for the one wrk thread) requests are paced, wrk2-style:
-- delay() hands each connection the next free slot of an evenly spaced schedule, so
-- arrivals are smooth instead of hey's bursts (hey's workers tick in step: -c 8 sends
-- 8 requests at once, and the last one queues behind the other 7). wrk's timers have
-- 1 ms resolution, so a request leaves within ~1 ms of its slot. Latency is measured
-- from the request's write, as in the saturation runs.

wrk.method = "POST"
wrk.body = os.getenv("QG_BENCH_BODY")
  or '{"model":"gpt-3.5-turbo","messages":[{"role":"user","content":"Hello"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("QG_BENCH_KEY") or "none")

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'QG_BENCH_JSON {"duration_us":%d,"requests":%d,"bytes":%d,'
      .. '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end

local rate = tonumber(os.getenv("QG_BENCH_RATE") or "")
if rate and rate > 0 then
  local ffi = require("ffi")
  ffi.cdef[[
    typedef struct { long tv_sec; long tv_nsec; } qg_timespec;
    int clock_gettime(int clk_id, qg_timespec *tp);
  ]]
  local CLOCK_MONOTONIC = 1
  local ts = ffi.new("qg_timespec")
  local interval_us = 1e6 / rate
  local next_slot = nil

  local function now_us()
    ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
    return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
  end

  function delay()
    local now = now_us()
    -- A slot nobody was free to take is not made up for later with a burst: the
    -- achieved rate falls short instead, and run.py flags that.
    if next_slot == nil or next_slot < now then
      next_slot = now
    end
    local wait_ms = (next_slot - now) / 1000
    next_slot = next_slot + interval_us
    return math.floor(wait_ms + 0.5)
  end
end
