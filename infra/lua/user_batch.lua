-- user_batch.lua: every event of one batch that belongs to one user shard, applied exactly once
-- (docs/architecture.md, docs/exposure.md, docs/sequences.md, docs/statistics.md). Called by
-- stream.writers.UserBatchWriter, which builds the argument layout; guard_lib.lua, tiles_lib.lua and
-- bloom_lib.lua are prepended.
--
-- KEYS: 1 the shard's replay guard hash (field = source partition, value = "offset:index"),
--       then per source partition its dedup hash and dedup-times zset, then per user its tile blob,
--       Bloom index hash (if it has impressions), sequence zsets and user x category tile blobs.
--       The arguments refer to keys by their KEYS index. Bloom sub-slice bitmaps are
--       <prefix><start>:<sub>, in the same slot (same hash tag) as the user's Bloom index.
-- ARGV[1] (msgpack, the writer's constants): { ttl tiles ms, dedup horizon ms, ttl dedup ms, ttl guard ms,
--         tile layout, { retention ms, slice ms, key ttl s, sub-slice table "m,k,cap;..." },
--         { type index, capacity, ... } }
-- ARGV[2] (msgpack, the batch): { parts, users, cats, events }; ARGV[3] the tile slot images (binary);
-- ARGV[4] the Bloom bitmaps (binary: per user and slice, all of its impressions at the first sub-slice's size)
--   parts:  { { partition, dedup KEYS index, dedup-times KEYS index, watermark ms,
--               { first offset, first index, last offset, last index } of the partition in the batch }, ... }
--   users:  { { tile KEYS index, Bloom index KEYS index or 0, slice key prefix, { type, KEYS index, ... },
--               { { slice start, first bitmap byte }, ... }, tile cells, first image byte }, ... }
--   cats:   { { tile KEYS index, tile cells, first image byte }, ... }          (user x category blobs)
--   events: { { part no, offset, index, event_id, type index, ts, stats_late 0/1, user no, cat no or 0,
--               sequence member or '' [, slice start, h1, h2, h3 for impressions] }, ... }
--   Tile cells are pre-aggregated over every non-late event (filters.tiles.aggregate_cells); the script
--   takes back the events the guard or the dedup refuses.
-- Returns { statuses, Bloom items added, Bloom slices deleted, (type index, appended, trimmed) * types }
--   statuses: one character per event, A applied (first delivery), D duplicate, R replay of a first
--   delivery, r replay of a duplicate, o replay of an event whose dedup entry is gone (beyond the dedup
--   horizon: first or duplicate, the script cannot tell).

local CHUNK = 2000
local function chunked(cmd, key, list)
  local total = 0
  for i = 1, #list, CHUNK do
    total = total + redis.call(cmd, key, unpack(list, i, math.min(i + CHUNK - 1, #list)))
  end
  return total
end

local H = cmsgpack.unpack(ARGV[1])
local ttl_tiles, horizon, ttl_dedup, ttl_guard = H[1], H[2], H[3], H[4]
local layout = read_layout(H[5], ttl_tiles)
local bloom = { retention = H[6][1], slice = H[6][2], ttl = H[6][3], table = H[6][4] }
local seq_cap = {}
for i = 1, #H[7], 2 do seq_cap[H[7][i]] = H[7][i + 1] end

local A = cmsgpack.unpack(ARGV[2])
local parts, users, cats, ev = {}, {}, {}, A[4]
for p, x in ipairs(A[1]) do
  parts[p] = { field = x[1], dd = KEYS[x[2]], ddt = KEYS[x[3]], wm = x[4], span = x[5], ids = {}, evs = {} }
end
for u, x in ipairs(A[2]) do
  local usr = { tiles = KEYS[x[1]], bidx = x[2] > 0 and KEYS[x[2]] or nil, prefix = x[3], seq = {},
                adds = {}, bitmaps = {}, cells = x[6], img = x[7] }
  for i = 1, #x[4], 2 do usr.seq[x[4][i]] = KEYS[x[4][i + 1]] end
  for _, b in ipairs(x[5]) do usr.bitmaps[b[1]] = b[2] end
  users[u] = usr
end
for c, x in ipairs(A[3]) do cats[c] = { key = KEYS[x[1]], cells = x[2], img = x[3] } end
local images = ARGV[3]
-- event fields, by position
local P, OFF, IDX, ID, T, TS, LATE, U, CAT, M, S, H1, H2, H3 = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14
for i, e in ipairs(ev) do
  local part = parts[e[P]]
  part.ids[#part.ids + 1] = e[ID]
  part.evs[#part.evs + 1] = i
end

-- the guard and the dedup state of every partition in the batch
local fields = {}
for p = 1, #parts do fields[p] = parts[p].field end
local guard = guard_load(KEYS[1], fields)
for _, part in ipairs(parts) do
  -- every position of the batch's span is after its first: none is a replay unless the first is
  local s = part.span
  part.fresh = not guard_replay(guard, part.field, s[1], s[2])
  if part.fresh then guard.top[part.field] = { s[3], s[4] } end
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
  local key = users[e[U]].seq[e[T]]
  if not key then return false end
  local prefix = e[ID] .. '\0'
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', key, e[TS], e[TS])) do
    if string.sub(m, 1, #prefix) == prefix then return true end
  end
  return false
end

local status = {}
local seq_adds = {}  -- sequence key -> { type, list of score/member }
for i, e in ipairs(ev) do
  local part = parts[e[P]]
  local off, idx, id = e[OFF], e[IDX], e[ID]
  if not part.fresh and guard_replay(guard, part.field, off, idx) then
    -- first iff its dedup entry names this position; an entry gone beyond the dedup horizon is an
    -- event older than the watermark, whose item / author update could not change any count: not first
    local stored = part.stored[i]
    if not stored then status[i] = 'o'  -- a missing field comes back as false
    elseif stored == string.format('%d:%d', off, idx) then status[i] = 'R'
    else status[i] = 'r' end
  elseif part.seen[id] or part.stored[i] or (part.old_cut and e[TS] < part.old_cut and in_sequence(e)) then
    status[i] = 'D'
  else
    status[i] = 'A'
    part.seen[id] = true
    local dd, ddt = part.dd_new, part.ddt_new
    dd[#dd + 1] = id; dd[#dd + 1] = string.format('%d:%d', off, idx)
    ddt[#ddt + 1] = e[TS]; ddt[#ddt + 1] = id
    if not part.newest or e[TS] > part.newest then part.newest = e[TS] end
    local usr = users[e[U]]
    local key = usr.seq[e[T]]
    if key then
      local a = seq_adds[key]
      if not a then a = { t = e[T], list = {} }; seq_adds[key] = a end
      a.list[#a.list + 1] = e[TS]; a.list[#a.list + 1] = e[M]
    end
    if e[S] then
      usr.adds[#usr.adds + 1] = { s = e[S], h1 = e[H1], h2 = e[H2], h3 = e[H3] }
      usr.wm = part.wm
    end
  end
  if status[i] ~= 'A' and e[LATE] == 0 then
    tile_sub(layout, users[e[U]].cells, e[TS], e[T])
    if e[CAT] > 0 then tile_sub(layout, cats[e[CAT]].cells, e[TS], e[T]) end
  end
end

-- dedup state and guards
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
end
guard_save(guard, ttl_guard)

-- sequences
local appended, trimmed = {}, {}
for key, a in pairs(seq_adds) do
  appended[a.t] = (appended[a.t] or 0) + chunked('ZADD', key, a.list)
  trimmed[a.t] = (trimmed[a.t] or 0) + redis.call('ZREMRANGEBYRANK', key, 0, -(seq_cap[a.t] + 1))
end

-- statistics
for _, usr in ipairs(users) do tile_apply(layout, usr.tiles, usr.cells, images, usr.img) end
for _, cat in ipairs(cats) do tile_apply(layout, cat.key, cat.cells, images, cat.img) end

-- exposure filters
local bloom_added, bloom_deleted = 0, 0
for _, usr in ipairs(users) do
  if #usr.adds > 0 then
    local a, d = bloom_add(bloom, usr.bidx, usr.prefix, usr.wm, usr.adds, usr.bitmaps, ARGV[4])
    bloom_added = bloom_added + a
    bloom_deleted = bloom_deleted + d
  end
end

local out = { table.concat(status), bloom_added, bloom_deleted }
for t, n in pairs(appended) do
  out[#out + 1] = t; out[#out + 1] = n; out[#out + 1] = trimmed[t]
end
return out
