-- Roll a service's live alias back to an earlier deployment, as a new promotion: a
-- fresh submission seq (so an older deploy still in flight is superseded by
-- promote.lua, and any later submission still goes live over it) and a fresh fence
-- (so a holder of the deploy lock from before cannot promote with its token). The
-- caller has checked that the deployment is the service's and is still published.
-- KEYS: site:<service>, events stream, seq:<service>, fence:<service>,
--       promotions:<service>
-- ARGV: id, expected live id ('' = whatever is live), now_ms, events_max, service,
--       by (who asked), promotions_max
-- Returns {1, seq, fence} rolled back; {0, live_id} the live deployment is no longer
-- the expected one (nothing changed); {-1} the deployment is already live.
local live = redis.call('HGET', KEYS[1], 'id') or ''
if live == ARGV[1] then
  return {-1}
end
if ARGV[2] ~= '' and live ~= ARGV[2] then
  return {0, live}
end
local seq = redis.call('INCR', KEYS[3])
local fence = redis.call('INCR', KEYS[4])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'seq', seq, 'fence', fence,
  'promoted_at', ARGV[3], 'rollback', '1', 'from', live, 'by', ARGV[6])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*',
  'kind', 'site', 'service', ARGV[5], 'id', ARGV[1], 'seq', seq, 'at', ARGV[3],
  'rollback', '1', 'from', live, 'by', ARGV[6])
redis.call('LPUSH', KEYS[5], cjson.encode({id = ARGV[1], seq = seq,
  at = tonumber(ARGV[3]), rollback = true, from = live, by = ARGV[6]}))
redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[7]) - 1)
return {1, seq, fence}
