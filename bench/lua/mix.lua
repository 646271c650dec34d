-- The seed's normal mix through the gateway: ~72 % reads, ~28 % writes, weighted at random.
-- Data (tokens, SKUs, product ids, categories, search terms, stock versions) comes from
-- $BENCH_DATA, written by bench/run.py; each wrk thread takes its own share of the users.
package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
local c = require("common")

-- name, weight (per 1000), builder
local plan = {}
local function add(name, weight, build) table.insert(plan, {c.kind(name), weight, build}) end

local D, tokens, shoppers, skus, inv, nonce
local inv_at, versions = 0, {}
local JSON = "application/json"

local function pick(list) return list[math.random(#list)] end
local function auth(tok) return "Bearer " .. tok end

-- Product popularity is skewed: 80 % of views go to the first 20 % of the catalog.
local function product_id()
  local n = D.products
  if math.random() < 0.8 then return math.random(math.max(1, math.floor(n / 5))) end
  return math.random(n)
end

local function req(method, path, headers, body)
  return {method, path, headers, body}
end

add("list", 220, function()
  local sorts = {"newest", "price_asc", "price_desc"}
  return req("GET", string.format("/api/products?category=%s&page=%d&page_size=24&sort=%s",
    pick(D.categories), math.random(3), pick(D.sorts or sorts)), {})
end)
add("detail", 250, function()
  return req("GET", "/api/products/" .. product_id(), {})
end)
add("search", 80, function()
  return req("GET", "/api/products/search?q=" .. pick(D.terms), {})
end)
add("categories", 70, function()
  return req("GET", "/api/products/categories", {})
end)
add("profile", 50, function()
  return req("GET", "/api/users/me", {Authorization = auth(pick(tokens))})
end)
add("history", 50, function()
  return req("GET", "/api/orders?limit=10", {Authorization = auth(pick(shoppers))})
end)
add("cart", 180, function()
  return req("PUT", "/api/orders/cart/items",
    {Authorization = auth(pick(shoppers)), ["Content-Type"] = JSON},
    string.format('{"sku":"%s","quantity":%d}', pick(skus), math.random(0, 3)))
end)
add("order", 60, function()
  c.counter = c.counter + 1
  return req("POST", "/api/orders",
    {Authorization = auth(pick(shoppers)), ["Content-Type"] = JSON,
     ["Idempotency-Key"] = string.format("mix-%s-%d-%d", nonce, c.thread_id, c.counter)},
    string.format('{"items":[{"sku":"%s","quantity":1}],"payment_token":"tok_visa"}', pick(skus)))
end)
add("inventory", 39, function()
  -- Each thread owns its SKUs: the version it last saw is the one to send in If-Match.
  inv_at = inv_at % #inv + 1
  local sku = inv[inv_at]
  return req("PUT", "/api/inventory/" .. sku,
    {Authorization = auth(D.admin_token), ["Content-Type"] = JSON,
     ["If-Match"] = '"' .. versions[sku] .. '"'},
    string.format('{"available":%d}', math.random(500, 1000)))
end)
add("register", 1, function()
  c.counter = c.counter + 1
  return req("POST", "/api/users/register", {["Content-Type"] = JSON},
    string.format('{"email":"mix-%s-%d-%d@bench.example.com","password":"bench-password-1"}',
      nonce, c.thread_id, c.counter))
end)

-- $BENCH_KIND: that kind of request alone (the bench's cost-per-request scenario).
local only = os.getenv("BENCH_KIND")
if only ~= nil and only ~= "" then
  for _, p in ipairs(plan) do
    if c.kinds[p[1]] ~= only then p[2] = 0 end
  end
end

local total = 0
for _, p in ipairs(plan) do total = total + p[2] end
assert(total > 0, "BENCH_KIND names no kind of the mix")

function setup(thread) c.setup(thread) end

function init(args)
  c.thread_id = thread_id
  c.export()
  D = c.data()
  -- Per wrk run too: the warm-up and the measured run share the data file, and a key or an
  -- email used again would be answered from the first run (a 200 for the order it placed).
  nonce = D.nonce .. "-" .. c.now_us()
  math.randomseed(thread_id * 7919 + os.time())
  -- This thread's users and inventory SKUs (disjoint from other threads').
  local n = D.threads
  tokens, inv = {}, {}
  for i, t in ipairs(D.tokens) do if i % n == thread_id % n then table.insert(tokens, t) end end
  if #tokens == 0 then tokens = D.tokens end
  shoppers = {}
  for i, t in ipairs(D.shopper_tokens) do
    if i % n == thread_id % n then table.insert(shoppers, t) end
  end
  for i, s in ipairs(D.inventory) do
    if i % n == thread_id % n then table.insert(inv, s[1]); versions[s[1]] = s[2] end
  end
  skus = D.skus
end

function request()
  local r = math.random(total)
  local p
  for _, q in ipairs(plan) do
    r = r - q[2]
    if r <= 0 then p = q; break end
  end
  local k, build = p[1], p[3]
  local spec = build()
  spec[3]["X-Request-ID"] = c.rid(k)
  return wrk.format(spec[1], spec[2], spec[3], spec[4])
end

function response(status, headers, body)
  local k = c.record(headers, status)
  -- A stock change answers with the SKU and its new version: the next If-Match.
  if k ~= nil and c.kinds[k] == "inventory" and status == 200 then
    local sku = string.match(body, '"sku":"([^"]+)"')
    local etag = headers["etag"] or headers["ETag"]
    if sku and etag then versions[sku] = string.gsub(etag, '"', "") end
  end
end

done = c.done
