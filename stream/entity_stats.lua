-- entity_stats.lua: one item's or author's tile updates of a batch of forwarded first deliveries,
-- applied exactly once per source partition and offset (docs/architecture.md, docs/statistics.md).
-- Called by stream.writers.EntityStatsWriter; the argument layout is built there.
--
-- KEYS: 1 applied guard hash (field = source partition), 2 the entity's tile blob
-- ARGV: ttl tiles ms, ttl guard ms,
--       tile layout: fingerprint, nbytes, n_rings, (tile ms, slots, word offset) * n_rings,
--       n_events, (source partition, source offset, type index, ts, stats_late 0/1) * n
-- Returns: statuses, one character per event: A applied to the tiles, L applied but late (guard only),
--   R skipped by the replay guard.

local pos = 0
local function nxt() pos = pos + 1; return ARGV[pos] end
local function num() return tonumber(nxt()) end

local ttl_tiles, ttl_guard = num(), num()
local fp, nbytes, rings = num(), num(), {}
for r = 1, num() do rings[r] = { tile = num(), slots = num(), word = num() } end

-- ---------------------------------------------------------------- tiles (shared with entity_stats.lua)
local function tile_add(agg, ts, counter)
  for r, ring in ipairs(rings) do
    local tile = math.floor(ts / ring.tile)
    local slot = tile % ring.slots
    local byslot = agg[r]
    if not byslot then byslot = {}; agg[r] = byslot end
    local cell = byslot[slot]
    if not cell or cell.tile < tile then
      cell = { tile = tile, c = { 0, 0, 0, 0, 0, 0 } }; byslot[slot] = cell
    end
    if cell.tile == tile then cell.c[counter + 1] = cell.c[counter + 1] + 1 end
  end
end

local function tile_apply(key, agg)
  local get, cells = { 'GET', 'u32', 0 }, {}
  for r, byslot in pairs(agg) do
    local ring = rings[r]
    for slot, cell in pairs(byslot) do
      cell.bit = (ring.word + slot * 7) * 32
      cells[#cells + 1] = cell
      get[#get + 1] = 'GET'; get[#get + 1] = 'u32'; get[#get + 1] = cell.bit
    end
  end
  if #cells == 0 then return end
  local cur = redis.call('BITFIELD', key, unpack(get))
  local fresh = cur[1] ~= fp
  local ops = { 'OVERFLOW', 'SAT' }
  local function op(kind, bit, value)
    ops[#ops + 1] = kind; ops[#ops + 1] = 'u32'; ops[#ops + 1] = bit; ops[#ops + 1] = value
  end
  if fresh then
    redis.call('DEL', key)
    redis.call('SETRANGE', key, nbytes - 1, '\0')
    op('SET', 0, fp)
  end
  for i, cell in ipairs(cells) do
    local epoch = fresh and 0 or cur[i + 1]
    if epoch == cell.tile + 1 then
      for k = 1, 6 do
        if cell.c[k] > 0 then op('INCRBY', cell.bit + 32 * k, cell.c[k]) end
      end
    elseif epoch < cell.tile + 1 then
      op('SET', cell.bit, cell.tile + 1)
      for k = 1, 6 do op('SET', cell.bit + 32 * k, cell.c[k]) end
    end
  end
  if #ops > 2 then redis.call('BITFIELD', key, unpack(ops)) end
  if ttl_tiles > 0 then redis.call('PEXPIRE', key, ttl_tiles) end
end
-- ---------------------------------------------------------------- end of the shared tile code

local guards, top, status, agg = {}, {}, {}, {}
for i = 1, num() do
  local p, off, t, ts, late = nxt(), num(), num(), num(), nxt() == '1'
  if guards[p] == nil then
    guards[p] = tonumber(redis.call('HGET', KEYS[1], p) or '-1')
    top[p] = guards[p]
  end
  if off <= top[p] then  -- a source partition arrives in offset order: anything at or below is a copy
    status[i] = 'R'
  else
    if off > top[p] then top[p] = off end
    if late then
      status[i] = 'L'
    else
      status[i] = 'A'
      tile_add(agg, ts, t)
    end
  end
end

tile_apply(KEYS[2], agg)

local fields = {}
for p, off in pairs(top) do
  if off > guards[p] then fields[#fields + 1] = p; fields[#fields + 1] = off end
end
if #fields > 0 then
  redis.call('HSET', KEYS[1], unpack(fields))
  if ttl_guard > 0 then redis.call('PEXPIRE', KEYS[1], ttl_guard) end
end
return table.concat(status)
