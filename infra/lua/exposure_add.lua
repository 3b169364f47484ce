-- Add one user's impressions to their time-sliced exposure Bloom filters (recstream, hash scheme v1).
--
-- KEYS[1]  the user's index hash (serving.keys.bloom_index). Fields:
--            <start>     number of sub-slices of the slice starting at <start> (epoch ms)
--            <start>:n   distinct items in the newest sub-slice
--            <start>:p   "<end>;m,k,cap;m,k,cap;..." slice end (epoch ms) and the size of each sub-slice
--                        (the reader never re-derives sizes from settings); live at `at` iff
--                        start <= at and end > at - R
--            lo          smallest end of all stored slices (to skip the expiry scan cheaply)
--            wm          highest watermark applied (a replayed batch's older watermark is raised to it)
--          Three fields per slice keep a design-load user's index (31 slices) in a compact listpack.
-- ARGV[1]  slice key prefix: the bitmap of sub-slice i is prefix .. <start> .. ":" .. i
--          (== serving.keys.bloom_slice). Those keys are not in KEYS; they share the user's hash tag,
--          so they live in the same cluster slot as KEYS[1].
-- ARGV[2]  partition watermark (event time, ms); ARGV[3] retention ms; ARGV[4] slice length ms
-- ARGV[5]  safety TTL in seconds (wall clock, set on every key written)
-- ARGV[6]  sub-slice parameter table "m,k,cap;m,k,cap;..." for sub-slice 0, 1, ... (last one repeats)
-- ARGV[7..] quadruples: slice start, h1, h2, h3 (uint32 each, decimal; filters.bloom.item_hashes)
--
-- Bit offset of probe j: floor(((h1 + j*h2 + j*(j-1)/2*h3) mod 2^32) * m / 2^32) (filters.bloom.positions).
-- All intermediates < 2^53 (m <= 2^21, k <= 90), so Lua doubles are exact. SETBIT is idempotent; an item counts as new only if one of its SETBITs
-- flipped a 0 and it is in no older sub-slice of its slice, so replays change nothing.
-- Returns {items added, slices deleted}.

local idx = KEYS[1]
local prefix = ARGV[1]
local wm = tonumber(ARGV[2])
local retention = tonumber(ARGV[3])
local slice_ms = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local head = redis.call('HMGET', idx, 'lo', 'wm')
local lo = tonumber(head[1])
local lo_dirty = false
-- the watermark never goes back for this user: replaying old batches cannot resurrect expired slices
local stored_wm = tonumber(head[2])
if stored_wm and stored_wm > wm then wm = stored_wm end
local horizon = wm - retention
local TWO32 = 4294967296
local MAX_SUBS = 64

local function fmt(x)
  return string.format('%d', x)
end

local param_cache = {}
local function params_for(i)
  local p = param_cache[i]
  if p then return p end
  local j = 0
  for m, k, c in string.gmatch(ARGV[6], '(%d+),(%d+),(%d+)') do
    p = {tonumber(m), tonumber(k), tonumber(c), m .. ',' .. k .. ',' .. c}
    if j == i then break end
    j = j + 1
  end
  param_cache[i] = p
  return p
end

local function present(key, m, k, h1, h2, h3)
  for j = 0, k - 1 do
    local p = math.floor(((h1 + j * h2 + (j * (j - 1) / 2) * h3) % TWO32) * m / TWO32)
    if redis.call('GETBIT', key, p) == 0 then return false end
  end
  return true
end

local function setbits(key, m, k, h1, h2, h3)
  local flipped = false
  for j = 0, k - 1 do
    local p = math.floor(((h1 + j * h2 + (j * (j - 1) / 2) * h3) % TWO32) * m / TWO32)
    if redis.call('SETBIT', key, p, 1) == 0 then flipped = true end
  end
  return flipped
end

local touched = {}
local slices = {}

local function new_sub(st, s, i)
  local p = params_for(i)
  local key = prefix .. s .. ':' .. i
  local nbytes = math.floor((p[1] + 7) / 8)
  -- pre-size the bitmap (a bitmap grown by random SETBITs wastes memory); never shrink or clear one
  if redis.call('STRLEN', key) < nbytes then
    redis.call('SETRANGE', key, nbytes - 1, '\0')
  end
  st.subs[i] = p
  st.n_subs = i + 1
  st.n = 0
  st.dirty = true
  touched[key] = true
end

local function load(s)
  local st = slices[s]
  if st then return st end
  local r = redis.call('HMGET', idx, s, s .. ':n', s .. ':p')
  st = {subs = {}, n_subs = tonumber(r[1]) or 0, n = tonumber(r[2]) or 0, dirty = false}
  st.e = tonumber(s) + slice_ms
  if r[3] then
    local e_old = tonumber(string.match(r[3], '^(%-?%d+)'))
    if e_old and e_old >= st.e then st.e = e_old else st.dirty = true end
    local i = 0
    for m, k, c in string.gmatch(r[3], ';(%d+),(%d+),(%d+)') do
      st.subs[i] = {tonumber(m), tonumber(k), tonumber(c), m .. ',' .. k .. ',' .. c}
      i = i + 1
    end
  end
  for i = 0, st.n_subs - 1 do
    if st.subs[i] == nil then st.subs[i] = params_for(i) end
  end
  if lo == nil or st.e < lo then
    lo = st.e
    lo_dirty = true
  end
  if st.n_subs == 0 then
    new_sub(st, s, 0)
  end
  slices[s] = st
  return st
end

local added = 0
for t = 7, #ARGV, 4 do
  local s = ARGV[t]
  if tonumber(s) + slice_ms > horizon then
    local h1 = tonumber(ARGV[t + 1])
    local h2 = tonumber(ARGV[t + 2])
    local h3 = tonumber(ARGV[t + 3])
    local st = load(s)
    local found = false
    for i = 0, st.n_subs - 2 do
      local p = st.subs[i]
      if present(prefix .. s .. ':' .. i, p[1], p[2], h1, h2, h3) then
        found = true
        break
      end
    end
    if not found then
      local last = st.n_subs - 1
      local p = st.subs[last]
      local key = prefix .. s .. ':' .. last
      if st.n >= p[3] and st.n_subs < MAX_SUBS then
        if present(key, p[1], p[2], h1, h2, h3) then
          found = true
        else
          new_sub(st, s, st.n_subs)
          last = st.n_subs - 1
          p = st.subs[last]
          key = prefix .. s .. ':' .. last
        end
      end
      if not found then
        if setbits(key, p[1], p[2], h1, h2, h3) then
          st.n = st.n + 1
          added = added + 1
          st.dirty = true
        end
        touched[key] = true
      end
    end
  end
end

for s, st in pairs(slices) do
  if st.dirty then
    local parts = {fmt(st.e)}
    for i = 0, st.n_subs - 1 do parts[#parts + 1] = st.subs[i][4] end
    redis.call('HSET', idx, s, st.n_subs, s .. ':n', st.n, s .. ':p', table.concat(parts, ';'))
  end
end

-- drop slices that fell out of retention relative to the watermark (event time, not wall clock)
local deleted = 0
if lo ~= nil and lo <= horizon then
  local h = redis.call('HGETALL', idx)
  local map = {}
  for i = 1, #h, 2 do map[h[i]] = h[i + 1] end
  local new_lo = nil
  for f, v in pairs(map) do
    if string.find(f, '^%-?%d+$') then
      local e = tonumber(string.match(map[f .. ':p'] or '', '^(%-?%d+)')) or (tonumber(f) + slice_ms)
      if e <= horizon then
        local n_subs = tonumber(v) or 0
        for i = 0, n_subs - 1 do
          redis.call('DEL', prefix .. f .. ':' .. i)
          touched[prefix .. f .. ':' .. i] = nil
        end
        redis.call('HDEL', idx, f, f .. ':n', f .. ':p')
        deleted = deleted + 1
      elseif new_lo == nil or e < new_lo then
        new_lo = e
      end
    end
  end
  lo = new_lo
  lo_dirty = true
end

if stored_wm == nil or wm > stored_wm then
  redis.call('HSET', idx, 'wm', fmt(wm))
end
if lo_dirty then
  if lo == nil then
    redis.call('HDEL', idx, 'lo')
  else
    redis.call('HSET', idx, 'lo', fmt(lo))
  end
end

for key, _ in pairs(touched) do
  redis.call('EXPIRE', key, ttl)
end
if redis.call('EXISTS', idx) == 1 then
  redis.call('EXPIRE', idx, ttl)
end
return {added, deleted}
