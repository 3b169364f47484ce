-- entity_batch.lua: the tile updates of one item or author shard from a batch's first deliveries,
-- applied exactly once per source position (docs/architecture.md, docs/statistics.md).
-- Called by stream.writers.EntityBatchWriter after user_batch.lua; tiles_lib.lua is prepended.
--
-- KEYS: 1 the shard's replay guard hash (field = source partition, value = "offset:index"),
--       then the tile blob of every entity of the shard in the batch
-- ARGV[1] (msgpack, the writer's constants): { ttl tiles ms, ttl guard ms, tile layout }
-- ARGV[2] (msgpack, the batch): { entities, events }; ARGV[3] the tile slot images (binary)
--   entities: { { tile blob KEYS index, tile cells, first image byte }, ... }  (cells pre-aggregated over
--             the non-late events)
--   events:   { { guard field, source offset, source index, type index, ts, stats_late 0/1, entity no }, ... }
-- Returns: statuses, one character per event: A applied to the tiles, L applied but late (guard only),
--   R skipped by the replay guard (and taken back from the pre-aggregated cells).

local H = cmsgpack.unpack(ARGV[1])
local ttl_guard = H[2]
local layout = read_layout(H[3], H[1])
local A = cmsgpack.unpack(ARGV[2])
local entities, ev = A[1], A[2]

local guards, top, status = {}, {}, {}
for i, e in ipairs(ev) do
  local p, off, idx = e[1], e[2], e[3]
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
  -- a source partition arrives in position order (one worker, in order): at or below the newest is a copy
  if off < tp[1] or (off == tp[1] and idx <= tp[2]) then
    status[i] = 'R'
    if e[6] == 0 then tile_sub(layout, entities[e[7]][2], e[5], e[4]) end
  else
    top[p] = { off, idx }
    status[i] = (e[6] == 1) and 'L' or 'A'
  end
end

for _, x in ipairs(entities) do tile_apply(layout, KEYS[x[1]], x[2], ARGV[3], x[3]) end

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
