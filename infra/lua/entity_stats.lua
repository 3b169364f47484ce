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

local ttl_tiles, ttl_guard = num(), num()
local layout = read_layout(ttl_tiles)


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
      tile_add(layout, agg, ts, t)
    end
  end
end

tile_apply(layout, KEYS[2], agg)

local fields = {}
for p, off in pairs(top) do
  if off > guards[p] then fields[#fields + 1] = p; fields[#fields + 1] = off end
end
if #fields > 0 then
  redis.call('HSET', KEYS[1], unpack(fields))
  if ttl_guard > 0 then redis.call('PEXPIRE', KEYS[1], ttl_guard) end
end
return table.concat(status)
