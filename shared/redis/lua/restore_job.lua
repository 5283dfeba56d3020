-- Recreate a job Redis lost from its S3 copy (buildq doctor --recover), atomically,
-- only if Redis has no record of it: the same id, seq and fields, back on the ingest
-- list at its fair place (status 'accepted'), or ended at once as 'failed' with the
-- given error when it cannot run as submitted. Never lowers seq:<service>.
-- KEYS: job, jobs index, seq:<service>, ingest list, events stream, fair-queue
--       state of ingest, submissions:<service>, logs stream
-- ARGV: id, seq, created_at, now_ms, jobs_index_max, events_max, status
--       ('accepted' | 'failed'), ttl_s, log line, error ('' unless failed),
--       field, value, ...
-- Returns {1, status} restored; {0, current status} Redis still knows the job.
-- #include _fair
local id, seq, now, status = ARGV[1], ARGV[2], ARGV[4], ARGV[7]
local current = redis.call('HGET', KEYS[1], 'status')
if current then return {0, current} end
local counter = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
if counter < tonumber(seq) then redis.call('SET', KEYS[3], seq) end
local set = {'id', id, 'status', status, 'seq', seq, 'created_at', ARGV[3],
  'updated_at', now, 'attempts', 0, 'ingest_attempts', 0, 'p:accepted:start', now}
for i = 11, #ARGV, 2 do
  set[#set + 1] = ARGV[i]
  set[#set + 1] = ARGV[i + 1]
end
if status == 'failed' then
  set[#set + 1] = 'error'
  set[#set + 1] = ARGV[10]
  set[#set + 1] = 'p:accepted:end'
  set[#set + 1] = now
  set[#set + 1] = 'ended_at'
  set[#set + 1] = now
end
redis.call('HSET', KEYS[1], unpack(set))
redis.call('ZADD', KEYS[2], ARGV[3], id)
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5])
if excess > 0 then redis.call('ZREMRANGEBYRANK', KEYS[2], 0, excess - 1) end
redis.call('ZADD', KEYS[7], seq, id)
excess = redis.call('ZCARD', KEYS[7]) - tonumber(ARGV[5])
if excess > 0 then redis.call('ZREMRANGEBYRANK', KEYS[7], 0, excess - 1) end
redis.call('XADD', KEYS[8], '*', 'kind', 'line', 'text', ARGV[9])
if status == 'failed' then
  redis.call('XADD', KEYS[8], '*', 'kind', 'end', 'status', status, 'at', now)
  redis.call('EXPIRE', KEYS[1], ARGV[8])
  redis.call('EXPIRE', KEYS[8], ARGV[8])
else
  fair_push(KEYS[4], KEYS[6], string.sub(KEYS[1], 1, #KEYS[1] - #id), id)
  redis.call('XADD', KEYS[8], '*', 'kind', 'phase', 'status', status, 'at', now)
end
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[6], '*',
  'kind', 'job', 'id', id, 'status', status, 'at', now)
return {1, status}
