-- Claim a staging environment unless someone else holds an unexpired claim.
-- KEYS: staging hash, events stream
-- ARGV: env, claim (JSON), owner, now_ms, events_max
-- Returns {1, claim} claimed (or renewed by its owner, keeping claimed_at);
-- {0, current claim} claimed by someone else.
local env, claim, owner, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local current = redis.call('HGET', KEYS[1], env)
local action = 'claimed'
if current then
  local c = cjson.decode(current)
  local expired = c.expires_at ~= nil and c.expires_at ~= cjson.null
    and tonumber(c.expires_at) <= now
  if not expired then
    if c.owner ~= owner then return {0, current} end
    local new = cjson.decode(claim)
    new.claimed_at = c.claimed_at
    claim, action = cjson.encode(new), 'renewed'
  end
end
redis.call('HSET', KEYS[1], env, claim)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'kind', 'claim',
  'action', action, 'env', env, 'owner', owner, 'at', now)
return {1, claim}
