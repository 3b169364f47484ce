-- exposure_add.lua: add one user's impressions to their exposure Bloom filters, outside the worker's
-- batch script (stream.exposure_writer.ExposureWriter: benchmarks, tests, tools). bloom_lib.lua is
-- prepended; the worker runs the same bloom_add from user_batch.lua.
--
-- KEYS[1]  the user's Bloom index hash (KeyLayout.bloom_index); sub-slice bitmaps are ARGV[1]<start>:<sub>
-- ARGV: slice key prefix, watermark ms, retention ms, slice ms, key ttl s, sub-slice table, then
--       (slice start, h1, h2, h3) per impression
-- Returns {items added, slices deleted}.

local B = { retention = tonumber(ARGV[3]), slice = tonumber(ARGV[4]), ttl = tonumber(ARGV[5]), table = ARGV[6] }
local adds = {}
for t = 7, #ARGV, 4 do
  adds[#adds + 1] = { s = ARGV[t], h1 = tonumber(ARGV[t + 1]), h2 = tonumber(ARGV[t + 2]), h3 = tonumber(ARGV[t + 3]) }
end
local added, deleted = bloom_add(B, KEYS[1], ARGV[1], tonumber(ARGV[2]), adds, nil, nil)
return { added, deleted }
