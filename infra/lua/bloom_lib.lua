-- bloom_lib.lua: add one user's impressions to their time-sliced exposure Bloom filters (hash scheme v1);
-- prepended to user_batch.lua by infra.lua.Script (docs/exposure.md).
--
-- The user's index hash (KeyLayout.bloom_index) has, per slice starting at <start> (epoch ms):
--   <start>     number of sub-slices;   <start>:n   distinct items in the newest sub-slice
--   <start>:p   "<end>;m,k,cap;m,k,cap;..." the slice end and each sub-slice's size (the reader never
--               re-derives sizes from settings); live at `at` iff start <= at and end > at - retention
--   lo          smallest end of all stored slices (to skip the expiry scan cheaply)
--   wm          highest watermark applied (a replayed batch's older watermark is raised to it)
-- Sub-slice i's bitmap is prefix .. <start> .. ':' .. i. Bit offset of probe j:
-- floor(((h1 + j*h2 + j*(j-1)/2*h3) mod 2^32) * m / 2^32) (filters.bloom.positions); every intermediate
-- is < 2^53 (m <= 2^21, k <= 90), so Lua doubles are exact. An item counts as new only if one of its bits
-- flipped and it is in no older sub-slice of its slice, so replays change nothing.
--
-- Cost: a slice whose newest sub-slice cannot fill up in this batch (the usual case) takes one HMGET for
-- all of the user's slices, one BITFIELD per older sub-slice (none for most users), one BITFIELD that sets
-- every bit of every item and returns the old bits, and one HSET. Only a sub-slice about to reach its
-- capacity is walked item by item (GETBIT / SETBIT), exactly as the single-item rule says.
-- Wall-clock safety TTLs are set when a bitmap or a slice is created (retention + slice + safety from
-- then on outlives every read of it), not on every write.

local TWO32 = 4294967296
local bit_lib = bit
local MAX_SUBS = 64

-- the parameters of sub-slice i from the table "m,k,cap;m,k,cap;..." (the last one repeats), parsed once
-- per script call
local params_cache = {}
local function bloom_params(tbl, i)
  local p = params_cache[i]
  if p then return p end
  local j = 0
  for m, k, c in string.gmatch(tbl, '(%d+),(%d+),(%d+)') do
    p = { tonumber(m), tonumber(k), tonumber(c), m .. ',' .. k .. ',' .. c }
    if j == i then break end
    j = j + 1
  end
  params_cache[i] = p
  return p
end

local function probe(p, j, h1, h2, h3)
  return math.floor(((h1 + j * h2 + (j * (j - 1) / 2) * h3) % TWO32) * p[1] / TWO32)
end

local function bits_of(p, a, op, out)
  for j = 0, p[2] - 1 do
    out[#out + 1] = op; out[#out + 1] = 'u1'; out[#out + 1] = probe(p, j, a.h1, a.h2, a.h3)
    if op == 'SET' then out[#out + 1] = 1 end
  end
end

-- one BITFIELD of `op` (GET or SET) over every bit of every item, chunked below Lua's unpack limit;
-- returns the old bits, item after item, k per item
local function bitfield_items(key, p, op, items)
  local per = math.max(1, math.floor(6000 / (4 * p[2])))
  local all = {}
  for first = 1, #items, per do
    local ops = {}
    for n = first, math.min(first + per - 1, #items) do bits_of(p, items[n], op, ops) end
    for _, bit in ipairs(redis.call('BITFIELD', key, unpack(ops))) do all[#all + 1] = bit end
  end
  return all
end

local function present(key, p, a)
  for j = 0, p[2] - 1 do
    if redis.call('GETBIT', key, probe(p, j, a.h1, a.h2, a.h3)) == 0 then return false end
  end
  return true
end

local function setbits(key, p, a)
  local flipped = false
  for j = 0, p[2] - 1 do
    if redis.call('SETBIT', key, probe(p, j, a.h1, a.h2, a.h3), 1) == 0 then flipped = true end
  end
  return flipped
end

-- the slice's state from its three index fields (a fresh slice when they are absent)
local function slice_state(B, s, n_subs, n, meta)
  local st = { subs = {}, n_subs = tonumber(n_subs) or 0, n = tonumber(n) or 0, dirty = false }
  st.e = tonumber(s) + B.slice
  if meta then
    local e_old = tonumber(string.match(meta, '^(%-?%d+)'))
    if e_old and e_old >= st.e then st.e = e_old else st.dirty = true end
    local i = 0
    for m, k, c in string.gmatch(meta, ';(%d+),(%d+),(%d+)') do
      st.subs[i] = { tonumber(m), tonumber(k), tonumber(c), m .. ',' .. k .. ',' .. c }
      i = i + 1
    end
  end
  for i = 0, st.n_subs - 1 do
    if st.subs[i] == nil then st.subs[i] = bloom_params(B.table, i) end
  end
  return st
end

local function new_sub(B, st, key_of, i)
  local p = bloom_params(B.table, i)
  local key = key_of(i)
  local nbytes = math.floor((p[1] + 7) / 8)
  -- pre-size the bitmap (one grown by random SETBITs wastes memory); never shrink or clear one
  if redis.call('STRLEN', key) < nbytes then redis.call('SETRANGE', key, nbytes - 1, '\0') end
  redis.call('EXPIRE', key, B.ttl)
  st.subs[i] = p
  st.n_subs = i + 1
  st.n = 0
  st.dirty = true
  st.created = true
end

-- items in no older sub-slice of the slice (one BITFIELD GET per older sub-slice)
local function not_in_older(st, key_of, list)
  local rest = list
  for i = 0, st.n_subs - 2 do
    local p = st.subs[i]
    local got = bitfield_items(key_of(i), p, 'GET', rest)
    local keep, k = {}, p[2]
    for n, a in ipairs(rest) do
      local all = true
      for j = (n - 1) * k + 1, n * k do if got[j] == 0 then all = false; break end end
      if not all then keep[#keep + 1] = a end
    end
    rest = keep
  end
  return rest
end

-- the usual case: the newest sub-slice has room for every item of the batch
local function add_fast(st, key_of, list)
  local rest = not_in_older(st, key_of, list)
  if #rest == 0 then return 0 end
  local last = st.n_subs - 1
  local p = st.subs[last]
  local old = bitfield_items(key_of(last), p, 'SET', rest)
  local added, k = 0, p[2]
  for n = 1, #rest do
    for j = (n - 1) * k + 1, n * k do
      if old[j] == 0 then added = added + 1; break end
    end
  end
  st.n = st.n + added
  if added > 0 then st.dirty = true end
  return added
end

-- the usual case, without a bit per item over the Lua/Redis boundary: the slice has at most its first
-- sub-slice, which has room for every item, and Python sent the batch's bits at that sub-slice's size.
-- New items are counted on the old bitmap (GET, tested in Lua); the bits go in with one BITOP OR (or one
-- SET NX of a new bitmap). Returns nil when it does not apply.
local function add_bitmap(B, st, key_of, list, bitmap)
  local p = bloom_params(B.table, 0)
  if st.n_subs > 1 or (st.n_subs == 1 and st.subs[0][4] ~= p[4]) or st.n + #list > p[3] then return nil end
  local key, old = key_of(0), nil
  if st.n_subs == 0 then
    if not redis.call('SET', key, bitmap, 'NX') then return nil end  -- a stray bitmap: never overwrite one
    redis.call('EXPIRE', key, B.ttl)
    st.subs[0], st.n_subs, st.n, st.created = p, 1, 0, true
  else
    old = redis.call('GET', key) or ''
  end
  -- an item is new iff one of its bits is in neither the old bitmap nor an earlier item of the batch:
  -- exactly what SETBIT one item after the other reports
  local set, added = {}, 0
  for _, a in ipairs(list) do
    local new = false
    for j = 0, p[2] - 1 do
      local bit = probe(p, j, a.h1, a.h2, a.h3)
      if not set[bit] then
        set[bit] = true
        if old == nil or bit_lib.band(string.byte(old, math.floor(bit / 8) + 1) or 0, 2 ^ (7 - bit % 8)) == 0 then
          new = true
        end
      end
    end
    if new then added = added + 1 end
  end
  if old ~= nil then
    local tmp = key .. ':or'
    redis.call('SET', tmp, bitmap)
    redis.call('BITOP', 'OR', key, key, tmp)
    redis.call('DEL', tmp)
  end
  st.n = st.n + added
  st.dirty = true
  return added
end

-- a sub-slice may fill up: the single-item rule, item by item
local function add_slow(B, st, key_of, list)
  local added = 0
  for _, a in ipairs(list) do
    local found = false
    for i = 0, st.n_subs - 2 do
      if present(key_of(i), st.subs[i], a) then found = true; break end
    end
    if not found then
      local last = st.n_subs - 1
      if st.n >= st.subs[last][3] and st.n_subs < MAX_SUBS then
        if present(key_of(last), st.subs[last], a) then
          found = true
        else
          new_sub(B, st, key_of, st.n_subs)
          last = st.n_subs - 1
        end
      end
      if not found and setbits(key_of(last), st.subs[last], a) then
        st.n = st.n + 1
        added = added + 1
        st.dirty = true
      end
    end
  end
  return added
end

-- drop slices that fell out of retention relative to the watermark (event time, not wall clock)
local function expire_slices(B, idx, prefix, horizon)
  local h = redis.call('HGETALL', idx)
  local map = {}
  for i = 1, #h, 2 do map[h[i]] = h[i + 1] end
  local new_lo, deleted = nil, 0
  for f, v in pairs(map) do
    if string.find(f, '^%-?%d+$') then
      local e = tonumber(string.match(map[f .. ':p'] or '', '^(%-?%d+)')) or (tonumber(f) + B.slice)
      if e <= horizon then
        for i = 0, (tonumber(v) or 0) - 1 do redis.call('DEL', prefix .. f .. ':' .. i) end
        redis.call('HDEL', idx, f, f .. ':n', f .. ':p')
        deleted = deleted + 1
      elseif new_lo == nil or e < new_lo then
        new_lo = e
      end
    end
  end
  return new_lo, deleted
end

-- B: {retention, slice, ttl, table}; adds: list of {s, h1, h2, h3} in delivery order.
-- Returns items added, slices deleted.
local function bloom_add(B, idx, prefix, wm, adds, bitmaps, bitmap_bytes)
  local order, by_slice = {}, {}
  for _, a in ipairs(adds) do
    local l = by_slice[a.s]
    if not l then l = {}; by_slice[a.s] = l; order[#order + 1] = a.s end
    l[#l + 1] = a
  end
  local fields = { 'lo', 'wm' }
  for _, s in ipairs(order) do
    fields[#fields + 1] = s; fields[#fields + 1] = s .. ':n'; fields[#fields + 1] = s .. ':p'
  end
  local r = redis.call('HMGET', idx, unpack(fields))
  local lo, stored_wm = tonumber(r[1]), tonumber(r[2])
  if stored_wm and stored_wm > wm then wm = stored_wm end  -- never back: old batches resurrect nothing
  local horizon = wm - B.retention
  local out, lo_dirty, created, added = {}, false, false, 0
  for n, s in ipairs(order) do
    if tonumber(s) + B.slice > horizon then
      local st = slice_state(B, s, r[3 * n], r[3 * n + 1], r[3 * n + 2])
      local function key_of(i) return prefix .. s .. ':' .. i end
      if lo == nil or st.e < lo then lo = st.e; lo_dirty = true end
      local list = by_slice[s]
      local at = bitmaps and bitmaps[tonumber(s)]
      local nbytes = math.floor((bloom_params(B.table, 0)[1] + 7) / 8)
      local done = at and add_bitmap(B, st, key_of, list, string.sub(bitmap_bytes, at, at + nbytes - 1))
      if not done and st.n_subs == 0 then new_sub(B, st, key_of, 0) end
      if done then
        added = added + done
      elseif st.n + #list <= st.subs[st.n_subs - 1][3] then
        added = added + add_fast(st, key_of, list)
      else
        added = added + add_slow(B, st, key_of, list)
      end
      if st.dirty then
        local meta = { string.format('%d', st.e) }
        for i = 0, st.n_subs - 1 do meta[#meta + 1] = st.subs[i][4] end
        out[#out + 1] = s; out[#out + 1] = st.n_subs
        out[#out + 1] = s .. ':n'; out[#out + 1] = st.n
        out[#out + 1] = s .. ':p'; out[#out + 1] = table.concat(meta, ';')
      end
      created = created or st.created
    end
  end
  local deleted = 0
  if lo ~= nil and lo <= horizon then
    -- the scan must see this batch's slices: write them first
    if #out > 0 then redis.call('HSET', idx, unpack(out)); out = {} end
    lo, deleted = expire_slices(B, idx, prefix, horizon)
    lo_dirty = true
  end
  if stored_wm == nil or wm > stored_wm then out[#out + 1] = 'wm'; out[#out + 1] = string.format('%d', wm) end
  if lo_dirty and lo ~= nil then out[#out + 1] = 'lo'; out[#out + 1] = string.format('%d', lo) end
  if #out > 0 then redis.call('HSET', idx, unpack(out)) end
  if lo_dirty and lo == nil then redis.call('HDEL', idx, 'lo') end
  if created then redis.call('EXPIRE', idx, B.ttl) end
  return added, deleted
end
