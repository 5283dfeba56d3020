-- Extend locks that still carry the caller's token: all of them, or none.
-- KEYS: per service: lock, history
-- ARGV: count, token, ttl_ms, now_ms
-- Returns 1 when every lock was extended, 0 when any is no longer ours (lost).
local n, token, ttl = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local recs = {}
for i = 1, n do
  local held = redis.call('GET', KEYS[2 * i - 1])
  if not held then return 0 end
  local rec = cjson.decode(held)
  if rec.token ~= token then return 0 end
  recs[i] = rec
end
for i = 1, n do
  recs[i].expires_at = tonumber(ARGV[4]) + tonumber(ttl)
  local out = cjson.encode(recs[i])
  redis.call('SET', KEYS[2 * i - 1], out, 'PX', ttl)
  redis.call('HSET', KEYS[2 * i], 'current', out)
end
return 1
