-- The bare aiohttp JSON endpoint (bench/baseline.py), with the same accounting as the others.
package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
local c = require("common")
local K = c.kind("baseline")

function setup(thread) c.setup(thread) end

function init(args)
  c.thread_id = thread_id
  c.export()
end

function request()
  return wrk.format("GET", "/json", {["X-Request-ID"] = c.rid(K)})
end

function response(status, headers, body) c.record(headers, status) end

done = c.done
