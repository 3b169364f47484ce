-- tiles_lib.lua: the ARGV reader and the tile-ring code shared by user_batch.lua and entity_batch.lua.
-- infra.lua.Script prepends this file to each of them (Redis scripts cannot import).
--
-- A layout is { fp = fingerprint, nbytes = blob size, rings = { {tile, slots, word}... }, ttl = ms }.

local pos = 0
local function nxt() pos = pos + 1; return ARGV[pos] end
local function num() return tonumber(nxt()) end

-- ARGV: fingerprint, nbytes, n_rings, (tile ms, slots, word offset) * n_rings
local function read_layout(ttl_tiles)
  local layout = { fp = num(), nbytes = num(), rings = {}, ttl = ttl_tiles }
  for r = 1, num() do layout.rings[r] = { tile = num(), slots = num(), word = num() } end
  return layout
end

local function tile_add(layout, agg, ts, counter)
  for r, ring in ipairs(layout.rings) do
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

local function tile_apply(layout, key, agg)
  local get, cells = { 'GET', 'u32', 0 }, {}
  for r, byslot in pairs(agg) do
    local ring = layout.rings[r]
    for slot, cell in pairs(byslot) do
      cell.bit = (ring.word + slot * 7) * 32
      cell.coarse = (r == #layout.rings)
      cells[#cells + 1] = cell
      get[#get + 1] = 'GET'; get[#get + 1] = 'u32'; get[#get + 1] = cell.bit
    end
  end
  if #cells == 0 then return end
  local cur = redis.call('BITFIELD', key, unpack(get))
  local fresh = cur[1] ~= layout.fp
  local ops = { 'OVERFLOW', 'SAT' }
  local function op(kind, bit, value)
    ops[#ops + 1] = kind; ops[#ops + 1] = 'u32'; ops[#ops + 1] = bit; ops[#ops + 1] = value
  end
  if fresh then
    redis.call('DEL', key)
    redis.call('SETRANGE', key, layout.nbytes - 1, '\0')
    op('SET', 0, layout.fp)
  end
  local renew = false
  for i, cell in ipairs(cells) do
    local epoch = fresh and 0 or cur[i + 1]
    if cell.coarse and epoch < cell.tile + 1 then renew = true end
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
  -- the wall-clock safety TTL (longer than the longest window) is renewed when the blob is created and
  -- whenever a cell of the coarsest ring starts a new tile: at most once per coarse tile, not per write
  if layout.ttl > 0 and (fresh or renew) then redis.call('PEXPIRE', key, layout.ttl) end
end
