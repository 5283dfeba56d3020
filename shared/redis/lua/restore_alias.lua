-- Point a service's live alias back at the deployment its S3 copy names
-- (buildq doctor --recover), only when Redis has no alias or one with an older
-- seq: a recovery never moves a site backwards, run once, twice or beside live
-- promotions. The restored move is announced and kept in the promotion history.
-- KEYS: site:<service>, events stream, promotions:<service>
-- ARGV: id, seq, fence ('' when the copy has none), promoted_at, events_max,
--       service, promotions_max
-- Returns {1} restored; {0, live_id, live_seq} Redis already has that or a newer seq.
local live = redis.call('HMGET', KEYS[1], 'id', 'seq')
if live[2] and tonumber(live[2]) >= tonumber(ARGV[2]) then
  return {0, live[1] or '', live[2]}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'seq', ARGV[2], 'fence', ARGV[3],
  'promoted_at', ARGV[4], 'restored', '1')
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*',
  'kind', 'site', 'service', ARGV[6], 'id', ARGV[1], 'seq', ARGV[2], 'at', ARGV[4],
  'restored', '1')
redis.call('LPUSH', KEYS[3], cjson.encode({id = ARGV[1], seq = tonumber(ARGV[2]),
  at = tonumber(ARGV[4]), rollback = false, restored = true}))
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[7]) - 1)
return {1}
