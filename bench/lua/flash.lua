-- Flash sale: $BENCH_ATTEMPTS orders of one unit of one SKU, each with its own Idempotency-Key,
-- shared over the threads; a thread stops once its share is answered. Requests sent after a
-- thread's share is out (the pipeline still wants work) go to the gateway's /healthz and are
-- not counted as attempts.
package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
local c = require("common")
local K = c.kind("purchase")
local F = c.kind("filler")
local D, tokens, quota, sent, answered
local body

function setup(thread) c.setup(thread) end

function init(args)
  c.thread_id = thread_id
  c.export()
  D = c.data()
  tokens = D.flash_tokens
  local attempts, n = D.flash_attempts, D.threads
  quota = math.floor(attempts / n) + ((thread_id <= attempts % n) and 1 or 0)
  sent, answered = 0, 0
  body = string.format('{"items":[{"sku":"%s","quantity":1}],"payment_token":"tok_visa"}',
    D.flash_sku)
end

-- wrk calls the first thread's request() once before the run, to check what it returns; that
-- request is never sent, so it must not take one of the thread's attempts.
local checked = false

function request()
  if not checked then
    checked = true
    if thread_id == 1 then return wrk.format("GET", "/healthz") end
  end
  if sent >= quota then
    return wrk.format("GET", "/healthz", {["X-Request-ID"] = c.rid(F)})
  end
  sent = sent + 1
  return wrk.format("POST", "/api/orders", {
    Authorization = "Bearer " .. tokens[(sent + thread_id) % #tokens + 1],
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = string.format("flash-%s-%d-%d", D.nonce, thread_id, sent),
    ["X-Request-ID"] = c.rid(K),
  }, body)
end

-- Once its share is sent, a connection idles (one /healthz a second) until the thread stops:
-- when every attempt is answered, or when none has been for GIVE_UP_US (an attempt lost on
-- the way is then never answered, and counts as an error in the report).
local GIVE_UP_US = 15 * 1000000
local last_answer_us = 0

function delay()
  if sent >= quota then
    if c.now_us() - last_answer_us > GIVE_UP_US then c.finished() end
    return 1000
  end
  return 0
end

-- 409 sold_out is the answer every attempt after the last unit should get: not an error.
local function sold_out(status, body)
  return status == 409 and body ~= nil and string.find(body, '"error":"sold_out"', 1, true) ~= nil
end

function response(status, headers, body)
  local k = c.record(headers, status, sold_out(status, body))
  if k == K then
    answered = answered + 1
    last_answer_us = c.now_us()
    if answered >= quota then c.finished() end
  end
end

done = c.done
