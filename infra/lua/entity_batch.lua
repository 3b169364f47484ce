-- entity_batch.lua: the tile updates of one item or author shard from a batch's first deliveries,
-- applied exactly once per source position (docs/architecture.md, docs/statistics.md).
-- Called by stream.writers.EntityBatchWriter after user_batch.lua; guard_lib.lua and tiles_lib.lua are
-- prepended.
--
-- KEYS: 1 the shard's replay guard hash (field = source partition, value = "offset:index"),
--       then the tile blob of every entity of the shard in the batch
-- ARGV[1] (msgpack, the writer's constants): { ttl tiles ms, ttl guard ms, tile layout }
-- ARGV[2] (msgpack, the batch): { entities, spans }; ARGV[3] the tile slot images (binary)
--   entities: { { tile blob KEYS index, tile cells, first image byte }, ... }  (cells pre-aggregated over
--             the non-late events)
--   spans:    { { guard field, first offset, first index, last offset, last index }, ... }: the first and
--             last source position of every source partition in the batch
-- ARGV[4] (msgpack, only when the first call answered '?'): the events, in source order,
--   { { guard field, source offset, source index, type index, ts, stats_late 0/1, entity no }, ... }
-- Returns '' when the guard had seen no position of any span (everything applied: the caller knows the
-- late ones), '?' when it had and ARGV[4] is missing (nothing written: call again with the events), and
-- with the events one character per event: A applied to the tiles, L applied but late (guard only),
-- R skipped by the replay guard (and taken back from the pre-aggregated cells).

local H = cmsgpack.unpack(ARGV[1])
local ttl_guard = H[2]
local layout = read_layout(H[3], H[1])
local A = cmsgpack.unpack(ARGV[2])
local entities, spans = A[1], A[2]

local fields = {}
for n, s in ipairs(spans) do fields[n] = s[1] end
local guard = guard_load(KEYS[1], fields)
local status = ''
if ARGV[4] == nil then
  -- every position of a span is after its first: none is a replay unless the first is
  for _, s in ipairs(spans) do
    if guard_replay(guard, s[1], s[2], s[3]) then return '?' end
    guard.top[s[1]] = { s[4], s[5] }
  end
else
  local marks = {}
  for i, e in ipairs(cmsgpack.unpack(ARGV[4])) do
    if guard_replay(guard, e[1], e[2], e[3]) then
      marks[i] = 'R'
      if e[6] == 0 then tile_sub(layout, entities[e[7]][2], e[5], e[4]) end
    else
      marks[i] = (e[6] == 1) and 'L' or 'A'
    end
  end
  status = table.concat(marks)
end

for _, x in ipairs(entities) do tile_apply(layout, KEYS[x[1]], x[2], ARGV[3], x[3]) end

guard_save(guard, ttl_guard)
return status
