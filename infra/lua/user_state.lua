-- user_state.lua: one user's batch, applied exactly once (docs/architecture.md, docs/sequences.md,
-- docs/statistics.md). Called by stream.writers.UserStateWriter; the argument layout is built there.
--
-- KEYS: 1 applied guard hash, 2 dedup hash, 3 dedup-times zset, 4 user tile blob,
--       then the sequence keys and the user x category tile blobs (ARGV refers to them by KEYS index).
-- ARGV: partition field, dedup horizon ms, ttl tiles ms, ttl dedup ms, ttl guard ms,
--       n_seq, (type index, capacity, KEYS index) * n_seq,
--       tile layout: fingerprint, nbytes, n_rings, (tile ms, slots, word offset) * n_rings,
--       n_events, (offset, event_id, type index, ts, stats_late 0/1, category KEYS index or 0, member) * n
-- Returns: { statuses, (type index, appended, late inserted, length) * touched sequences }
--   statuses has one character per event: A applied (first delivery), D duplicate,
--   R replay of a first delivery, r replay of a duplicate (or of an event beyond the dedup horizon).

local CHUNK = 2000
local function chunked(cmd, key, list)
  local total = 0
  for i = 1, #list, CHUNK do
    local part = {}
    for j = i, math.min(i + CHUNK - 1, #list) do part[#part + 1] = list[j] end
    total = total + redis.call(cmd, key, unpack(part))
  end
  return total
end

local field = nxt()
local horizon, ttl_tiles, ttl_dedup, ttl_guard = num(), num(), num(), num()
local seq_cap, seq_key = {}, {}
for _ = 1, num() do
  local t = num(); seq_cap[t] = num(); seq_key[t] = KEYS[num()]
end
local layout = read_layout(ttl_tiles)


local n = num()
local ev = {}
local ids = {}
for i = 1, n do
  ev[i] = { off = num(), id = nxt(), t = num(), ts = num(), late = nxt() == '1', cat = num(), m = nxt() }
  ids[i] = ev[i].id
end

local guard = tonumber(redis.call('HGET', KEYS[1], field) or '-1')
local stored = {}
for i = 1, n, CHUNK do
  local part = {}
  for j = i, math.min(i + CHUNK - 1, n) do part[#part + 1] = ids[j] end
  local got = redis.call('HMGET', KEYS[2], unpack(part))
  for j = 1, #got do stored[i + j - 1] = got[j] end
end
local top = redis.call('ZREVRANGE', KEYS[3], 0, 0, 'WITHSCORES')
local newest = top[2] and tonumber(top[2]) or nil
local old_cut = newest and (newest - horizon) or nil

local status, seen, maxoff = {}, {}, guard
local dd, ddt, adds, agg_user, agg_cat = {}, {}, {}, {}, {}
local seq_top = {}

local function in_sequence(e)
  -- beyond the dedup horizon: look for the event id among the entries with the same score
  local key = seq_key[e.t]
  if not key then return false end
  local prefix = e.id .. '\0'
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', key, e.ts, e.ts)) do
    if string.sub(m, 1, #prefix) == prefix then return true end
  end
  return false
end

for i = 1, n do
  local e = ev[i]
  if e.off > maxoff then maxoff = e.off end
  if e.off <= guard then
    -- first iff its dedup entry names this offset; an entry gone beyond the dedup horizon is an
    -- event older than the watermark, whose forward could not change any count: not first
    status[i] = (stored[i] and tonumber(stored[i]) == e.off) and 'R' or 'r'

  elseif seen[e.id] or stored[i] or (old_cut and e.ts < old_cut and in_sequence(e)) then
    status[i] = 'D'
  else
    status[i] = 'A'
    seen[e.id] = true
    dd[#dd + 1] = e.id; dd[#dd + 1] = e.off
    ddt[#ddt + 1] = e.ts; ddt[#ddt + 1] = e.id
    if not newest or e.ts > newest then newest = e.ts end
    local key = seq_key[e.t]
    if key then
      local a = adds[e.t]
      if not a then
        local last = redis.call('ZREVRANGE', key, 0, 0, 'WITHSCORES')
        a = { list = {}, top = last[2] and tonumber(last[2]) or nil, late = 0 }
        adds[e.t] = a
      end
      if a.top and e.ts < a.top then a.late = a.late + 1 end
      if not a.top or e.ts > a.top then a.top = e.ts end
      a.list[#a.list + 1] = e.ts; a.list[#a.list + 1] = e.m
    end
    if not e.late then
      tile_add(layout, agg_user, e.ts, e.t)
      if e.cat > 0 then
        local agg = agg_cat[e.cat]
        if not agg then agg = {}; agg_cat[e.cat] = agg end
        tile_add(layout, agg, e.ts, e.t)
      end
    end
  end
end

if #dd > 0 then
  chunked('HSET', KEYS[2], dd)
  chunked('ZADD', KEYS[3], ddt)
  local cut = '(' .. tostring(newest - horizon)
  while true do
    local old = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', cut, 'LIMIT', 0, CHUNK)
    if #old == 0 then break end
    redis.call('HDEL', KEYS[2], unpack(old))
    redis.call('ZREMRANGEBYRANK', KEYS[3], 0, #old - 1)
    if #old < CHUNK then break end
  end
  if ttl_dedup > 0 then
    redis.call('PEXPIRE', KEYS[2], ttl_dedup); redis.call('PEXPIRE', KEYS[3], ttl_dedup)
  end
end

local out = { table.concat(status) }
for t, a in pairs(adds) do
  local key = seq_key[t]
  local added = chunked('ZADD', key, a.list)
  redis.call('ZREMRANGEBYRANK', key, 0, -(seq_cap[t] + 1))
  out[#out + 1] = t; out[#out + 1] = added; out[#out + 1] = a.late
  out[#out + 1] = redis.call('ZCARD', key)
end

tile_apply(layout, KEYS[4], agg_user)
for k, agg in pairs(agg_cat) do tile_apply(layout, KEYS[k], agg) end

if maxoff > guard then
  redis.call('HSET', KEYS[1], field, maxoff)
  if ttl_guard > 0 then redis.call('PEXPIRE', KEYS[1], ttl_guard) end
end
return out
