-- clock_save.lua: a partition clock (stream.watermarks.WatermarkStore.save), written only forward.
--
-- KEYS[1] the clock hash of one (group, topic, partition): max_ts, offset, index, next
-- ARGV[1] max_ts, ARGV[2] offset, ARGV[3] index, ARGV[4] next
-- A worker that lost the partition in a rebalance may still be finishing a batch: its older clock
-- must not overwrite the newer one of the partition's new owner. Returns 1 written, 0 refused (stale).

local cur = redis.call('HMGET', KEYS[1], 'offset', 'index', 'next')
local off, idx, nxt = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if cur[1] then
  local co, ci = tonumber(cur[1]), tonumber(cur[2] or '-1')
  if co > off or (co == off and ci > idx) then return 0 end
end
if cur[3] and tonumber(cur[3]) > nxt then return 0 end
redis.call('HSET', KEYS[1], 'max_ts', ARGV[1], 'offset', ARGV[2], 'index', ARGV[3], 'next', ARGV[4])
return 1
