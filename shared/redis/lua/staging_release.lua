-- Release a staging claim: only its owner, or anyone with force.
-- KEYS: staging hash, events stream
-- ARGV: env, owner, force (1|0), now_ms, events_max
-- Returns {1, claim} released; {0} not claimed (or the claim had expired);
-- {-1, claim} claimed by someone else.
local env, owner, now = ARGV[1], ARGV[2], tonumber(ARGV[4])
local current = redis.call('HGET', KEYS[1], env)
if not current then return {0} end
local c = cjson.decode(current)
if c.expires_at ~= nil and c.expires_at ~= cjson.null and tonumber(c.expires_at) <= now then
  redis.call('HDEL', KEYS[1], env)
  return {0}
end
if c.owner ~= owner and ARGV[3] ~= '1' then return {-1, current} end
redis.call('HDEL', KEYS[1], env)
local action = 'released'
if c.owner ~= owner then action = 'forced' end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'kind', 'claim',
  'action', action, 'env', env, 'owner', c.owner, 'by', owner, 'at', now)
return {1, current}
