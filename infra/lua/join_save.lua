-- join_save.lua: the label-join checkpoint of one user shard for one source partition, written at once
-- (stream.join_stage.JoinStage; docs/samples.md).
--
-- KEYS[1] the join-state hash: field user_id -> msgpack state (filters.labels.UserJoin),
--         field "\0pos" -> "offset:index", the source position the states hold
-- ARGV[1] that position, ARGV[2] the wall-clock safety TTL in ms (0 = none), ARGV[3] n = states to set,
-- ARGV[4 .. 3 + 2n] user, state pairs, then the users whose state is gone
-- Returns 1 written, 0 refused: the hash already holds a later position (a worker that lost the
-- partition in a rebalance finishing a batch must not put older states over its new owner's).

local CHUNK = 2000
local function position(raw)
  local o, x = string.match(raw, '^(%-?%d+):(%-?%d+)$')
  return tonumber(o), tonumber(x)
end
local stored = redis.call('HGET', KEYS[1], '\0pos')
if stored then
  local so, sx = position(stored)
  local no, nx = position(ARGV[1])
  if so > no or (so == no and sx > nx) then return 0 end
end
local n = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], '\0pos', ARGV[1])
local last = 3 + 2 * n
for i = 4, last, 2 * CHUNK do
  redis.call('HSET', KEYS[1], unpack(ARGV, i, math.min(i + 2 * CHUNK - 1, last)))
end
for i = last + 1, #ARGV, CHUNK do
  redis.call('HDEL', KEYS[1], unpack(ARGV, i, math.min(i + CHUNK - 1, #ARGV)))
end
if tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
