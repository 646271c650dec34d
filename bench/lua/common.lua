-- Shared by every bench script: request ids that carry the send time, per-second latency
-- histograms per request kind, and the summary written when wrk finishes.
--
-- Why not wrk's own numbers alone: wrk reports one latency distribution for the whole run.
-- For latency over time, each request gets an X-Request-ID "b<kind>x<send-time-us>x<n>"; the
-- gateway (and the baseline app) return it on the response, so response() knows the kind and
-- the latency of every answer. Clock: clock_gettime(CLOCK_MONOTONIC) through LuaJIT's ffi.
-- Per thread, per second and kind: answers, errors (status >= 400), and a histogram of
-- latencies in log buckets (5 % wide). done() writes them, with wrk's own summary, as JSON
-- lines to $BENCH_OUT, which bench/report.py reads.

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local CLOCK_REALTIME = 0 -- shared by threads and the Python harness (wall-clock seconds)

local M = {}

function M.now_us()
  ffi.C.clock_gettime(CLOCK_REALTIME, ts)
  return tonumber(ts.tv_sec) * 1000000 + math.floor(tonumber(ts.tv_nsec) / 1000)
end

local LOG_STEP = math.log(1.05)
M.kinds = {}      -- index -> name
M.stats = {}      -- second -> kind -> {n, err, b = {bucket -> count}}
M.counter = 0
M.thread_id = 0

function M.kind(name)
  table.insert(M.kinds, name)
  return #M.kinds
end

-- X-Request-ID for a request of kind k sent now.
function M.rid(k)
  M.counter = M.counter + 1
  return string.format("b%dx%dx%dx%d", k, M.now_us(), M.thread_id, M.counter)
end

local cur_sec = nil
local flushed = {}      -- JSON lines of completed seconds
local since_tail = 0

local function encode(sec, per_sec, out)
  for k, s in pairs(per_sec) do
    local parts = {}
    for b, n in pairs(s.b) do table.insert(parts, string.format('"%d":%d', b, n)) end
    local codes = {}
    for code, n in pairs(s.c) do table.insert(codes, string.format('"%d":%d', code, n)) end
    table.insert(out, string.format(
      '{"type":"second","t":%d,"kind":"%s","n":%d,"err":%d,"buckets":{%s},"codes":{%s}}',
      sec, M.kinds[k] or tostring(k), s.n, s.err, table.concat(parts, ","),
      table.concat(codes, ",")))
  end
end

-- wrk copies only plain values out of a thread (thread:get of a nested table crashes 4.1.0):
-- completed seconds go to the string bench_dump, the current one to bench_tail.
function M.flush_tail()
  local out = {}
  if cur_sec ~= nil and M.stats[cur_sec] then encode(cur_sec, M.stats[cur_sec], out) end
  bench_tail = table.concat(out, "\n")
  since_tail = 0
end

-- `expected`: an answer >= 400 the scenario counts as success (the flash sale's sold_out).
function M.record(headers, status, expected)
  local rid = headers["x-request-id"] or headers["X-Request-ID"] or headers["X-Request-Id"]
  if rid == nil then
    -- Not ours to count (a filler the gateway answers itself): a moment to publish the
    -- current second, which a thread that never stops by itself would otherwise lose.
    if since_tail > 0 then M.flush_tail() end
    return nil
  end
  local k, t = string.match(rid, "^b(%d+)x(%d+)x")
  if k == nil then return nil end
  k = tonumber(k)
  local now = M.now_us()
  local lat = now - tonumber(t)
  if lat < 1 then lat = 1 end
  local sec = math.floor(now / 1000000)
  if cur_sec ~= sec then
    if cur_sec ~= nil and M.stats[cur_sec] then
      encode(cur_sec, M.stats[cur_sec], flushed)
      M.stats[cur_sec] = nil
      bench_dump = table.concat(flushed, "\n")
      -- The tail held a snapshot of the second just dumped: done() must not count it twice.
      bench_tail, since_tail = "", 0
    end
    cur_sec = sec
  end
  local per_sec = M.stats[sec]
  if per_sec == nil then per_sec = {}; M.stats[sec] = per_sec end
  local s = per_sec[k]
  if s == nil then s = {n = 0, err = 0, b = {}, c = {}}; per_sec[k] = s end
  s.n = s.n + 1
  s.c[status] = (s.c[status] or 0) + 1
  if status >= 400 and not expected then s.err = s.err + 1 end
  local bucket = math.floor(math.log(lat) / LOG_STEP)
  s.b[bucket] = (s.b[bucket] or 0) + 1
  since_tail = since_tail + 1
  if since_tail >= 256 then M.flush_tail() end
  return k
end

local thread_count = 0
local threads = {}

function M.setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_id", thread_count)
  table.insert(threads, thread)
end

function M.done(summary, latency, requests)
  local path = os.getenv("BENCH_OUT")
  local f = assert(io.open(path, "w"))
  local e = summary.errors
  f:write(string.format(
    '{"type":"summary","duration_us":%d,"requests":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p95_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"mean_us":%.1f}\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(95), latency:percentile(99),
    latency.max, latency.mean))
  for _, thread in ipairs(threads) do
    for _, name in ipairs({"bench_dump", "bench_tail"}) do
      local text = thread:get(name)
      if text and #text > 0 then f:write(text, "\n") end
    end
  end
  f:close()
end

-- A thread with nothing left to do says so ($BENCH_OUT.done-<thread>): wrk runs for its whole
-- duration whatever its threads do, so the harness interrupts it once every thread is done.
function M.finished()
  M.flush_tail()
  local f = io.open(os.getenv("BENCH_OUT") .. ".done-" .. M.thread_id, "w")
  if f then f:close() end
  wrk.thread:stop()
end

-- Called from each thread's init().
function M.export()
  bench_dump, bench_tail = "", ""
end

-- The data the harness prepared (a Lua file returning a table), once per thread.
function M.data()
  return dofile(os.getenv("BENCH_DATA"))
end

function M.json_escape(s)
  return (string.gsub(s, '[%c"\\]', function(c) return string.format("\\u%04x", string.byte(c)) end))
end

return M
