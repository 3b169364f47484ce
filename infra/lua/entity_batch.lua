-- entity_batch.lua: the tile updates of one item or author shard from a batch's first deliveries,
-- applied exactly once per source position (docs/architecture.md, docs/statistics.md).
-- Called by stream.writers.EntityBatchWriter after user_batch.lua; guard_lib.lua and tiles_lib.lua are
-- prepended.
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

local fields, seen = {}, {}
for _, e in ipairs(ev) do
  if not seen[e[1]] then seen[e[1]] = true; fields[#fields + 1] = e[1] end
end
local guard = guard_load(KEYS[1], fields)
local status = {}
for i, e in ipairs(ev) do
  if guard_replay(guard, e[1], e[2], e[3]) then
    status[i] = 'R'
    if e[6] == 0 then tile_sub(layout, entities[e[7]][2], e[5], e[4]) end
  else
    status[i] = (e[6] == 1) and 'L' or 'A'
  end
end

for _, x in ipairs(entities) do tile_apply(layout, KEYS[x[1]], x[2], ARGV[3], x[3]) end

guard_save(guard, ttl_guard)
return table.concat(status)
