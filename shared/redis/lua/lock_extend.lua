-- Extend locks that still carry the caller's token: all of them, or none.
-- KEYS: per service: lock, history
-- ARGV: count, token, ttl_ms, now_ms
-- Returns 1 when every lock was extended, 0 when any is no longer ours (lost).
-- A record in the shape the lock scripts write (starting with its token, one
-- '"expires_at":N', which can only be a key: quotes inside JSON strings are escaped)
-- is edited as text; anything else is decoded.
local n, token, ttl = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local expires = tonumber(ARGV[4]) + tonumber(ttl)
local mine = '{"token":"' .. token .. '",'
local outs = {}
for i = 1, n do
  local held = redis.call('GET', KEYS[2 * i - 1])
  if not held then return 0 end
  local out, found
  if string.sub(held, 1, #mine) == mine then
    out, found = string.gsub(held, '"expires_at":%d+', '"expires_at":' .. expires, 1)
  end
  if found ~= 1 then
    local rec = cjson.decode(held)
    if rec.token ~= token then return 0 end
    rec.expires_at = expires
    out = cjson.encode(rec)
  end
  outs[i] = out
end
for i = 1, n do
  redis.call('SET', KEYS[2 * i - 1], outs[i], 'PX', ttl)
  redis.call('HSET', KEYS[2 * i], 'current', outs[i])
end
return 1
