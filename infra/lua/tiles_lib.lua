-- tiles_lib.lua: the tile-ring code shared by user_batch.lua and entity_batch.lua; infra.lua.Script
-- prepends this file to each of them (Redis scripts cannot import).
--
-- A layout is { fp = fingerprint, nbytes = blob size, rings = { {tile, slots, word}... }, ttl = ms }.
-- Cells come pre-aggregated from Python (filters.tiles.aggregate_cells): a flat list of
-- ring (1-based), slot, tile, counter 1..6 — 9 numbers per cell, the newest tile of each slot — and
-- their slot images (binary, in the script's third argument).

-- L = { fingerprint, nbytes, { {tile ms, slots, word offset}, ... } } (filters.tiles.TileLayout.lua_args)
local function read_layout(L, ttl_tiles)
  local layout = { fp = L[1], nbytes = L[2], rings = {}, ttl = ttl_tiles }
  for r, ring in ipairs(L[3]) do layout.rings[r] = { tile = ring[1], slots = ring[2], word = ring[3] } end
  return layout
end

-- take back one event that Python counted but the guard or the dedup refused (its cell's slot image
-- is stale from now on: marked dirty)
local function tile_sub(layout, cells, ts, counter)
  for r, ring in ipairs(layout.rings) do
    local tile = math.floor(ts / ring.tile)
    local slot = tile % ring.slots
    for i = 1, #cells, 9 do
      if cells[i] == r and cells[i + 1] == slot then
        if cells[i + 2] == tile then
          cells[i + 3 + counter] = cells[i + 3 + counter] - 1
          cells.dirty = cells.dirty or {}
          cells.dirty[i] = true
        end
        break
      end
    end
  end
end

-- images: the call's slot images (28 bytes per cell: epoch = tile + 1 and the six counters, big-endian
-- u32), this blob's first one at byte img (1-based), in the order of its cells. A slot that starts a new
-- tile takes its image in one SETRANGE; a slot already on the tile gets INCRBYs.
local function tile_apply(layout, key, cells, images, img)
  local get, live = { 'GET', 'u32', 0 }, {}
  for i = 1, #cells, 9 do
    local any = false
    for k = 3, 8 do if cells[i + k] > 0 then any = true; break end end
    if any then  -- a cell whose events were all taken back writes nothing, as if never sent
      local ring = layout.rings[cells[i]]
      live[#live + 1] = i
      get[#get + 1] = 'GET'; get[#get + 1] = 'u32'; get[#get + 1] = (ring.word + cells[i + 1] * 7) * 32
    end
  end
  if #live == 0 then return end
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
  local renew, coarse, dirty = false, #layout.rings, cells.dirty or {}
  for n, i in ipairs(live) do
    local epoch = fresh and 0 or cur[n + 1]
    local tile = cells[i + 2]
    local bit = get[3 * n + 3]
    if epoch == tile + 1 then
      for k = 1, 6 do
        if cells[i + 2 + k] > 0 then op('INCRBY', bit + 32 * k, cells[i + 2 + k]) end
      end
    elseif epoch < tile + 1 then
      if cells[i] == coarse then renew = true end
      if dirty[i] then
        op('SET', bit, tile + 1)
        for k = 1, 6 do op('SET', bit + 32 * k, cells[i + 2 + k]) end
      else
        local at = img + (i - 1) / 9 * 28
        redis.call('SETRANGE', key, bit / 8, string.sub(images, at, at + 27))
      end
    end
  end
  if #ops > 2 then redis.call('BITFIELD', key, unpack(ops)) end
  -- the wall-clock safety TTL (longer than the longest window) is renewed when the blob is created and
  -- whenever a cell of the coarsest ring starts a new tile: at most once per coarse tile, not per write
  if layout.ttl > 0 and (fresh or renew) then redis.call('PEXPIRE', key, layout.ttl) end
end
