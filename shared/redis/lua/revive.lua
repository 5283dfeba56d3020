-- Bring a failed, cancelled or dead-lettered job back to life at a stage's queue.
-- KEYS: job, events stream, logs stream, dead list, destination list,
--       private build override, fair-queue state
-- The job takes a new turn in its queue (_fair.lua), as every push does.
-- ARGV: id, now_ms, events_max, status to resume at ('accepted' or 'queued')
-- Returns {-1} unknown job, {0, status} not revivable, {1, status}.
-- #include _fair
local id, now, status = ARGV[1], ARGV[2], ARGV[4]
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return {-1} end
if current ~= 'failed' and current ~= 'cancelled' then return {0, current} end
redis.call('LREM', KEYS[4], 0, id)
redis.call('HDEL', KEYS[1], 'ended_at', 'error', 'dead', 'p:' .. status .. ':end')
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[3])
redis.call('PERSIST', KEYS[6])
redis.call('HSET', KEYS[1], 'status', status, 'updated_at', now, 'attempts', 0,
  'ingest_attempts', 0, 'p:' .. status .. ':start', now)
fair_push(KEYS[5], KEYS[7], string.sub(KEYS[1], 1, #KEYS[1] - #id), id)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*',
  'kind', 'job', 'id', id, 'status', status, 'at', now)
redis.call('XADD', KEYS[3], '*', 'kind', 'phase', 'status', status, 'at', now)
return {1, status}
