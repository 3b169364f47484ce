-- Return the bitmaps of every live sub-slice of one user's exposure filter, in one round trip.
--
-- KEYS[1]  the user's index hash (infra.keys.KeyLayout.bloom_index; layout in bloom_lib.lua)
-- ARGV[1]  slice key prefix (bitmap of sub-slice i = prefix .. <start> .. ":" .. i; same hash tag as KEYS[1])
-- ARGV[2]  at (epoch ms); ARGV[3] retention ms; ARGV[4] slice length ms (used only if <start>:p is missing)
-- A slice is live iff start <= at and end > at - retention.
-- Returns a flat array: params_1, bitmap_1, params_2, bitmap_2, ... (params = "m,k,capacity").
-- Read-only: may run with EVALSHA_RO on a replica.

local h = redis.call('HGETALL', KEYS[1])
local map = {}
for i = 1, #h, 2 do map[h[i]] = h[i + 1] end
local prefix = ARGV[1]
local at = tonumber(ARGV[2])
local horizon = at - tonumber(ARGV[3])
local slice_ms = tonumber(ARGV[4])
local out = {}
for f, v in pairs(map) do
  if string.find(f, '^%-?%d+$') then
    local start = tonumber(f)
    local meta = map[f .. ':p'] or ''
    local e = tonumber(string.match(meta, '^(%-?%d+)')) or (start + slice_ms)
    if start <= at and e > horizon then
      local i = 0
      for p in string.gmatch(meta, ';(%d+,%d+,%d+)') do
        if i >= (tonumber(v) or 0) then break end
        local data = redis.call('GET', prefix .. f .. ':' .. i)
        if data then
          out[#out + 1] = p
          out[#out + 1] = data
        end
        i = i + 1
      end
    end
  end
end
return out
