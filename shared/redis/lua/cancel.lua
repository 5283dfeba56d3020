-- Cancel a job: take it off whatever it waits in, end it, and tell the workers
-- (a running job's worker stops its build and acks it).
-- KEYS: job, events stream, logs stream, ingest list, queue list, delayed zset,
--       private build override, stats hash
-- ARGV: id, now_ms, ttl_s, events_max, control channel, reason
-- Returns {-1} unknown job, {0, status} already ended, {1, previous status}.
-- #include _stats
local id, now = ARGV[1], ARGV[2]
local cur = redis.call('HMGET', KEYS[1], 'status', 'ended_at')
if not cur[1] then return {-1} end
if cur[2] then return {0, cur[1]} end
redis.call('LREM', KEYS[4], 0, id)
redis.call('LREM', KEYS[5], 0, id)
redis.call('ZREM', KEYS[6], id)
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'updated_at', now, 'ended_at', now,
  'p:' .. cur[1] .. ':end', now, 'error', ARGV[6])
stats_ended(KEYS[8], KEYS[1], 'cancelled', now)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*',
  'kind', 'job', 'id', id, 'status', 'cancelled', 'at', now)
redis.call('XADD', KEYS[3], '*', 'kind', 'line', 'text', 'buildq: ' .. ARGV[6])
redis.call('XADD', KEYS[3], '*', 'kind', 'end', 'status', 'cancelled', 'at', now)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[3])
redis.call('EXPIRE', KEYS[7], ARGV[3])  -- kept for a retry while the record lives
redis.call('PUBLISH', ARGV[5], cjson.encode({type = 'cancel', id = id}))
return {1, cur[1]}
