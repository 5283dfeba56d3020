-- Move a job to a new status, atomically with its queue bookkeeping.
-- KEYS: job, events stream, logs stream, [ack list], [push list]
-- ARGV: id, status, now_ms, terminal(0|1), ttl_s, events_max, flags, field, value, ...
--   flags: 'r' return the record, 'a' LREM id from KEYS[4], 'p' LPUSH id onto KEYS[5]
--          (the tail: claimed last), 'h' RPUSH id onto KEYS[5] (the head: claimed next),
--          'i' count one more attempt
-- Returns false if the job does not exist, {0, current} if it has already ended
-- (ended jobs never change again), else {1, record-or-empty}.
local id, status, now = ARGV[1], ARGV[2], ARGV[3]
local current = redis.call('HGET', KEYS[1], 'status')
if not current then
  if string.find(ARGV[7], 'a', 1, true) then redis.call('LREM', KEYS[4], 0, id) end
  return false
end
if redis.call('HEXISTS', KEYS[1], 'ended_at') == 1 then
  if string.find(ARGV[7], 'a', 1, true) then redis.call('LREM', KEYS[4], 0, id) end
  return {0, current}
end
if current ~= status then
  redis.call('HSET', KEYS[1], 'p:' .. current .. ':end', now, 'p:' .. status .. ':start', now)
  -- Re-entering a phase (a retry) starts it afresh.
  redis.call('HDEL', KEYS[1], 'p:' .. status .. ':end')
end
redis.call('HSET', KEYS[1], 'status', status, 'updated_at', now)
for i = 8, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
local flags = ARGV[7]
if string.find(flags, 'a', 1, true) then redis.call('LREM', KEYS[4], 0, id) end
if string.find(flags, 'p', 1, true) then redis.call('LPUSH', KEYS[5], id) end
if string.find(flags, 'h', 1, true) then redis.call('RPUSH', KEYS[5], id) end
if string.find(flags, 'i', 1, true) then redis.call('HINCRBY', KEYS[1], 'attempts', 1) end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*',
  'kind', 'job', 'id', id, 'status', status, 'at', now)
redis.call('XADD', KEYS[3], '*', 'kind', 'phase', 'status', status, 'at', now)
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[1], 'ended_at', now)
  redis.call('XADD', KEYS[3], '*', 'kind', 'end', 'status', status, 'at', now)
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  redis.call('EXPIRE', KEYS[3], ARGV[5])
end
if string.find(flags, 'r', 1, true) then
  return {1, redis.call('HGETALL', KEYS[1])}
end
return {1, {}}
