-- Create a job record and put its id on the ingest list, atomically; with an
-- idempotency key, a repeated submission returns the first job instead.
-- KEYS: job, jobs index, seq:<service>, ingest list, events stream, private build
--       override, fair-queue state, submissions:<service>, [idem key]
-- ARGV: id, now_ms, jobs_index_max, events_max, idem_ttl_ms, build override JSON
--       ('' for none: the record's 'build' field is its redacted copy), field, value, ...
-- Returns {1, seq} for a new job, {0, existing_id} for a repeated idempotency key.
-- #include _fair
local id, now = ARGV[1], ARGV[2]
if KEYS[9] then
  local existing = redis.call('GET', KEYS[9])
  if existing then return {0, existing} end
  redis.call('SET', KEYS[9], id, 'PX', ARGV[5])
end
local seq = redis.call('INCR', KEYS[3])
local set = {'id', id, 'status', 'accepted', 'seq', seq, 'created_at', now,
  'updated_at', now, 'attempts', 0, 'ingest_attempts', 0, 'p:accepted:start', now}
if ARGV[6] ~= '' then redis.call('SET', KEYS[6], ARGV[6]) end
for i = 7, #ARGV, 2 do
  set[#set + 1] = ARGV[i]
  set[#set + 1] = ARGV[i + 1]
end
redis.call('HSET', KEYS[1], unpack(set))
redis.call('ZADD', KEYS[2], now, id)
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
if excess > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, excess - 1)
end
-- The service's submissions by seq, for the claim-time staleness check
-- (deployer/staleness.py); trimmed to the same length as the jobs index.
redis.call('ZADD', KEYS[8], seq, id)
excess = redis.call('ZCARD', KEYS[8]) - tonumber(ARGV[3])
if excess > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[8], 0, excess - 1)
end
fair_push(KEYS[4], KEYS[7], string.sub(KEYS[1], 1, #KEYS[1] - #id), id)
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[4], '*',
  'kind', 'job', 'id', id, 'status', 'accepted', 'at', now)
return {1, seq}
