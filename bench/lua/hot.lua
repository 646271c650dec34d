-- Product detail hot path: a small set of products every request (cache hits after warm-up).
package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
local c = require("common")
local K = c.kind("detail")
local ids

function setup(thread) c.setup(thread) end

function init(args)
  c.thread_id = thread_id
  c.export()
  ids = c.data().hot_ids
  math.randomseed(thread_id)
end

function request()
  return wrk.format("GET", "/api/products/" .. ids[math.random(#ids)],
    {["X-Request-ID"] = c.rid(K)})
end

function response(status, headers, body) c.record(headers, status) end

done = c.done
