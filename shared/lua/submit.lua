-- Create a job record and put its id on the ingest list, atomically.
-- KEYS: job, jobs index, seq:<service>, ingest list, events stream
-- ARGV: id, now_ms, jobs_index_max, events_max, field, value, ...
local id, now = ARGV[1], ARGV[2]
local seq = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], 'id', id, 'status', 'accepted', 'seq', seq,
  'created_at', now, 'updated_at', now, 'attempts', 0, 'p:accepted:start', now)
for i = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('ZADD', KEYS[2], now, id)
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
if excess > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, excess - 1)
end
redis.call('LPUSH', KEYS[4], id)
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[4], '*',
  'kind', 'job', 'id', id, 'status', 'accepted', 'at', now)
return seq
