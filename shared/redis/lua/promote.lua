-- Point a service's live alias at a deployment: only forward in submission order,
-- only for a job that has not ended (a cancelled job never goes live), and, when a
-- fence is given, only while it is still the service's current fencing token.
-- The seq is compared before the fence: a deploy that a newer one (or a rollback,
-- rollback.lua) overtook while it held the lock is superseded, not retried.
-- KEYS: site:<service>, events stream, job, fence:<service>, promotions:<service>
-- ARGV: id, seq, fence ('' = no lock held), now_ms, events_max, service, promotions_max
-- Returns {1} promoted; {0, live_id, live_seq} a newer or equal seq is live;
-- {-1, current_fence} the fence is stale; {-2, status} the job has ended.
if redis.call('HEXISTS', KEYS[3], 'ended_at') == 1 then
  return {-2, redis.call('HGET', KEYS[3], 'status') or 'missing'}
end
local live = redis.call('HMGET', KEYS[1], 'id', 'seq')
if live[1] == ARGV[1] then
  return {1}  -- a re-run of the live deployment: nothing to change (idempotent)
end
local live_seq = live[2]
if live_seq and tonumber(live_seq) >= tonumber(ARGV[2]) then
  return {0, live[1], live_seq}
end
if ARGV[3] ~= '' then
  local current = redis.call('GET', KEYS[4])
  if current ~= ARGV[3] then
    return {-1, current or ''}
  end
end
redis.call('DEL', KEYS[1])  -- no field of a rollback lingers
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'seq', ARGV[2], 'fence', ARGV[3],
  'promoted_at', ARGV[4])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*',
  'kind', 'site', 'service', ARGV[6], 'id', ARGV[1], 'seq', ARGV[2], 'at', ARGV[4])
redis.call('LPUSH', KEYS[5], cjson.encode({id = ARGV[1], seq = tonumber(ARGV[2]),
  at = tonumber(ARGV[4]), rollback = false}))
redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[7]) - 1)
return {1}
