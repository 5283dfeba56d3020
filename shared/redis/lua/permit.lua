-- Take (or keep) one of at most ARGV[4] fleet-wide claim permits for a slot.
-- KEYS: permits zset (slot -> expiry ms)
-- ARGV: slot id, now_ms, expires_at_ms, max_concurrency
-- Returns 1 if the slot holds a permit now, else 0. A slot that holds one while
-- the fleet is over a lowered limit gives it up (it is idle: it is asking again).
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
local count = redis.call('ZCARD', KEYS[1])
local max = tonumber(ARGV[4])
if held then
  if count > max then
    redis.call('ZREM', KEYS[1], ARGV[1])
    return 0
  end
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  return 1
end
if count < max then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  return 1
end
return 0
