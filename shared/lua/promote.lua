-- Point a service's live alias at a deployment, only forward in submission order.
-- KEYS: site:<service>, events stream
-- ARGV: id, seq, fence, now_ms, events_max, service
-- Returns {1} when promoted, {0, live_id, live_seq} when a newer or equal seq is live.
local live_seq = redis.call('HGET', KEYS[1], 'seq')
if live_seq and tonumber(live_seq) >= tonumber(ARGV[2]) then
  return {0, redis.call('HGET', KEYS[1], 'id'), live_seq}
end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'seq', ARGV[2], 'fence', ARGV[3],
  'promoted_at', ARGV[4])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*',
  'kind', 'site', 'service', ARGV[6], 'id', ARGV[1], 'seq', ARGV[2], 'at', ARGV[4])
return {1}
