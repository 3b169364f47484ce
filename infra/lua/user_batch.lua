-- user_batch.lua: every event of one batch that belongs to one user shard, applied exactly once
-- (docs/architecture.md, docs/exposure.md, docs/sequences.md, docs/statistics.md). Called by
-- stream.writers.UserBatchWriter, which builds the argument layout; tiles_lib.lua is prepended.
--
-- KEYS: 1 the shard's replay guard hash (field = source partition, value = "offset:index"),
--       then per source partition its dedup hash and dedup-times zset, then per user its tile blob,
--       Bloom index hash (if it has impressions), sequence zsets and user x category tile blobs.
--       ARGV refers to keys by their KEYS index. Bloom sub-slice bitmaps are <prefix><start>:<sub>,
--       in the same slot (same hash tag) as the user's Bloom index.
-- ARGV: ttl tiles ms, dedup horizon ms, ttl dedup ms, ttl guard ms,
--       tile layout: fingerprint, nbytes, n_rings, (tile ms, slots, word offset) * n_rings,
--       Bloom: retention ms, slice ms, key ttl s, sub-slice table "m,k,cap;m,k,cap;...",
--       n_seq, (type index, capacity) * n_seq,
--       n_parts, (partition, dedup KEYS index, dedup-times KEYS index, watermark ms) * n_parts,
--       n_users, (tile KEYS index, Bloom index KEYS index or 0, slice key prefix, n,
--                 (type index, sequence KEYS index) * n) * n_users,
--       n_events, (part no, offset, index, event_id, type index, ts, stats_late 0/1, user no,
--                  user x category KEYS index or 0, sequence member or '', slice start or '', h1, h2, h3) * n
-- Returns { statuses, bloom items added, Bloom slices deleted, (type index, appended, trimmed) * types }
--   statuses: one character per event, A applied (first delivery), D duplicate, R replay of a first
--   delivery, r replay of a duplicate (or of an event beyond the dedup horizon).

local CHUNK = 2000
local function chunked(cmd, key, list)
  local total = 0
  for i = 1, #list, CHUNK do
    total = total + redis.call(cmd, key, unpack(list, i, math.min(i + CHUNK - 1, #list)))
  end
  return total
end

local ttl_tiles, horizon, ttl_dedup, ttl_guard = num(), num(), num(), num()
local layout = read_layout(ttl_tiles)
local bloom = { retention = num(), slice = num(), ttl = num(), table = nxt() }
local seq_cap = {}
for _ = 1, num() do local t = num(); seq_cap[t] = num() end

local parts = {}
for p = 1, num() do
  parts[p] = { field = nxt(), dd = KEYS[num()], ddt = KEYS[num()], wm = num(), ids = {}, evs = {} }
end
local users = {}
for u = 1, num() do
  local usr = { tiles = KEYS[num()], bidx = num(), prefix = nxt(), seq = {}, adds = {}, agg = {} }
  usr.bidx = usr.bidx > 0 and KEYS[usr.bidx] or nil
  for _ = 1, num() do local t = num(); usr.seq[t] = KEYS[num()] end
  users[u] = usr
end
local ev = {}
for i = 1, num() do
  local e = { p = num(), off = nxt(), idx = nxt(), id = nxt(), t = num(), ts = num(), late = nxt() == '1',
              u = num(), cat = num(), m = nxt(), s = nxt(), h1 = num(), h2 = num(), h3 = num() }
  ev[i] = e
  local part = parts[e.p]
  part.ids[#part.ids + 1] = e.id
  part.evs[#part.evs + 1] = i
end

-- the guard and the dedup state of every partition in the batch
local fields = {}
for p = 1, #parts do fields[p] = parts[p].field end
local stored_guard = redis.call('HMGET', KEYS[1], unpack(fields))
for p, part in ipairs(parts) do
  local g = stored_guard[p]
  part.goff, part.gidx = -1, -1
  if g then
    local o, x = string.match(g, '^(%-?%d+):(%d+)$')
    part.goff, part.gidx = tonumber(o), tonumber(x)
  end
  part.top_off, part.top_idx = part.goff, part.gidx
  part.stored = {}
  for i = 1, #part.ids, CHUNK do
    local got = redis.call('HMGET', part.dd, unpack(part.ids, i, math.min(i + CHUNK - 1, #part.ids)))
    for j = 1, #got do part.stored[part.evs[i + j - 1]] = got[j] end
  end
  local top = redis.call('ZREVRANGE', part.ddt, 0, 0, 'WITHSCORES')
  part.newest = top[2] and tonumber(top[2]) or nil
  part.old_cut = part.newest and (part.newest - horizon) or nil
  part.seen, part.dd_new, part.ddt_new = {}, {}, {}
end

local function in_sequence(e)
  -- beyond the dedup horizon: look for the event id among the entries with the same score
  local key = users[e.u].seq[e.t]
  if not key then return false end
  local prefix = e.id .. '\0'
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', key, e.ts, e.ts)) do
    if string.sub(m, 1, #prefix) == prefix then return true end
  end
  return false
end

local status = {}
local seq_adds = {}  -- sequence key -> { type, list of score/member }
local cat_agg = {}   -- user x category KEYS index -> tile aggregate
for i, e in ipairs(ev) do
  local part = parts[e.p]
  local off, idx = tonumber(e.off), tonumber(e.idx)
  local here = e.off .. ':' .. e.idx
  if off > part.top_off or (off == part.top_off and idx > part.top_idx) then
    part.top_off, part.top_idx = off, idx
  end
  if off < part.goff or (off == part.goff and idx <= part.gidx) then
    -- first iff its dedup entry names this position; an entry gone beyond the dedup horizon is an
    -- event older than the watermark, whose forward could not change any count: not first
    status[i] = (part.stored[i] == here) and 'R' or 'r'
  elseif part.seen[e.id] or part.stored[i] or (part.old_cut and e.ts < part.old_cut and in_sequence(e)) then
    status[i] = 'D'
  else
    status[i] = 'A'
    part.seen[e.id] = true
    local dd, ddt = part.dd_new, part.ddt_new
    dd[#dd + 1] = e.id; dd[#dd + 1] = here
    ddt[#ddt + 1] = e.ts; ddt[#ddt + 1] = e.id
    if not part.newest or e.ts > part.newest then part.newest = e.ts end
    local usr = users[e.u]
    local key = usr.seq[e.t]
    if key then
      local a = seq_adds[key]
      if not a then a = { t = e.t, list = {} }; seq_adds[key] = a end
      a.list[#a.list + 1] = e.ts; a.list[#a.list + 1] = e.m
    end
    if e.s ~= '' then
      usr.adds[#usr.adds + 1] = { s = e.s, h1 = e.h1, h2 = e.h2, h3 = e.h3 }
      usr.wm = part.wm
    end
    if not e.late then
      tile_add(layout, usr.agg, e.ts, e.t)
      if e.cat > 0 then
        local agg = cat_agg[e.cat]
        if not agg then agg = {}; cat_agg[e.cat] = agg end
        tile_add(layout, agg, e.ts, e.t)
      end
    end
  end
end

-- dedup state and guards
local guard_fields = {}
for _, part in ipairs(parts) do
  if #part.dd_new > 0 then
    chunked('HSET', part.dd, part.dd_new)
    chunked('ZADD', part.ddt, part.ddt_new)
    local cut = '(' .. tostring(part.newest - horizon)
    while true do
      local old = redis.call('ZRANGEBYSCORE', part.ddt, '-inf', cut, 'LIMIT', 0, CHUNK)
      if #old == 0 then break end
      redis.call('HDEL', part.dd, unpack(old))
      redis.call('ZREMRANGEBYRANK', part.ddt, 0, #old - 1)
      if #old < CHUNK then break end
    end
    if ttl_dedup > 0 then
      redis.call('PEXPIRE', part.dd, ttl_dedup); redis.call('PEXPIRE', part.ddt, ttl_dedup)
    end
  end
  if part.top_off > part.goff or (part.top_off == part.goff and part.top_idx > part.gidx) then
    guard_fields[#guard_fields + 1] = part.field
    guard_fields[#guard_fields + 1] = string.format('%d:%d', part.top_off, part.top_idx)
  end
end
if #guard_fields > 0 then
  redis.call('HSET', KEYS[1], unpack(guard_fields))
  if ttl_guard > 0 then redis.call('PEXPIRE', KEYS[1], ttl_guard) end
end

-- sequences
local appended, trimmed = {}, {}
for key, a in pairs(seq_adds) do
  appended[a.t] = (appended[a.t] or 0) + chunked('ZADD', key, a.list)
  trimmed[a.t] = (trimmed[a.t] or 0) + redis.call('ZREMRANGEBYRANK', key, 0, -(seq_cap[a.t] + 1))
end

-- statistics
for _, usr in ipairs(users) do tile_apply(layout, usr.tiles, usr.agg) end
for k, agg in pairs(cat_agg) do tile_apply(layout, KEYS[k], agg) end

-- exposure filters
local bloom_added, bloom_deleted = 0, 0
for _, usr in ipairs(users) do
  if #usr.adds > 0 then
    local a, d = bloom_add(bloom, usr.bidx, usr.prefix, usr.wm, usr.adds)
    bloom_added = bloom_added + a
    bloom_deleted = bloom_deleted + d
  end
end

local out = { table.concat(status), bloom_added, bloom_deleted }
for t, n in pairs(appended) do
  out[#out + 1] = t; out[#out + 1] = n; out[#out + 1] = trimmed[t]
end
return out
