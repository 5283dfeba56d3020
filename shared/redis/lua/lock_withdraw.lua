-- Leave the line for a lock; if it was handed to us meanwhile, say so.
-- KEYS: lock, waiters
-- ARGV: token
-- Returns {1, fence} the lock is ours (handed over); {0} we are out of line.
local held = redis.call('GET', KEYS[1])
if held then
  local rec = cjson.decode(held)
  if rec.token == ARGV[1] then return {1, rec.fence} end
end
redis.call('HDEL', KEYS[2], ARGV[1])
return {0}
