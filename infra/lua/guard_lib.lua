-- guard_lib.lua: the replay guard shared by user_batch.lua and entity_batch.lua (infra.lua.Script
-- prepends it; Redis scripts cannot import). A guard hash maps a source partition to "offset:index",
-- the newest source position applied to its shard. One worker applies a partition's events in position
-- order, so an event at or before the newest position seen (stored, or earlier in this call) is a replay.

-- the guard of `key` for these fields (one HMGET)
local function guard_load(key, fields)
  local g = { key = key, stored = {}, top = {} }
  local got = redis.call('HMGET', key, unpack(fields))
  for n, f in ipairs(fields) do
    local o, x = -1, -1
    if got[n] then
      local so, sx = string.match(got[n], '^(%-?%d+):(%d+)$')
      o, x = tonumber(so), tonumber(sx)
    end
    g.stored[f] = { o, x }
    g.top[f] = { o, x }
  end
  return g
end

-- true when (off, idx) of partition f is a replay; otherwise it becomes the newest position seen
local function guard_replay(g, f, off, idx)
  local t = g.top[f]
  if off < t[1] or (off == t[1] and idx <= t[2]) then return true end
  g.top[f] = { off, idx }
  return false
end

-- write the positions that moved (one HSET) and renew the wall-clock safety TTL
local function guard_save(g, ttl)
  local out = {}
  for f, t in pairs(g.top) do
    local s = g.stored[f]
    if t[1] > s[1] or (t[1] == s[1] and t[2] > s[2]) then
      out[#out + 1] = f; out[#out + 1] = string.format('%d:%d', t[1], t[2])
    end
  end
  if #out > 0 then
    redis.call('HSET', g.key, unpack(out))
    if ttl > 0 then redis.call('PEXPIRE', g.key, ttl) end
  end
end
