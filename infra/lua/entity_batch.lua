-- entity_batch.lua: the tile updates of one item or author shard from a batch of forwarded first
-- deliveries, applied exactly once per source partition and position (docs/architecture.md,
-- docs/statistics.md). Called by stream.writers.EntityBatchWriter; tiles_lib.lua is prepended.
--
-- KEYS: 1 the shard's replay guard hash (field = source partition, value = "offset:index"),
--       then the tile blob of every entity of the shard in the batch
-- ARGV: ttl tiles ms, ttl guard ms,
--       tile layout: fingerprint, nbytes, n_rings, (tile ms, slots, word offset) * n_rings,
--       n_events, (source partition, source offset, source index, type index, ts, stats_late 0/1,
--                  tile blob KEYS index) * n
-- Returns: statuses, one character per event: A applied to the tiles, L applied but late (guard only),
--   R skipped by the replay guard.

local ttl_tiles, ttl_guard = num(), num()
local layout = read_layout(ttl_tiles)

local guards, top, status, aggs = {}, {}, {}, {}
for i = 1, num() do
  local p, off, idx, t, ts, late, k = nxt(), num(), num(), num(), num(), nxt() == '1', num()
  if guards[p] == nil then
    local g = redis.call('HGET', KEYS[1], p)
    local o, x = -1, -1
    if g then
      local so, sx = string.match(g, '^(%-?%d+):(%d+)$')
      o, x = tonumber(so), tonumber(sx)
    end
    guards[p] = { o, x }
    top[p] = { o, x }
  end
  local tp = top[p]
  -- a source partition arrives in position order: anything at or below the newest applied is a copy
  if off < tp[1] or (off == tp[1] and idx <= tp[2]) then
    status[i] = 'R'
  else
    top[p] = { off, idx }
    if late then
      status[i] = 'L'
    else
      status[i] = 'A'
      local agg = aggs[k]
      if not agg then agg = {}; aggs[k] = agg end
      tile_add(layout, agg, ts, t)
    end
  end
end

for k, agg in pairs(aggs) do tile_apply(layout, KEYS[k], agg) end

local fields = {}
for p, t in pairs(top) do
  local g = guards[p]
  if t[1] > g[1] or (t[1] == g[1] and t[2] > g[2]) then
    fields[#fields + 1] = p; fields[#fields + 1] = string.format('%d:%d', t[1], t[2])
  end
end
if #fields > 0 then
  redis.call('HSET', KEYS[1], unpack(fields))
  if ttl_guard > 0 then redis.call('PEXPIRE', KEYS[1], ttl_guard) end
end
return table.concat(status)
