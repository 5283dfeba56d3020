-- The transition function shared by transition.lua and take.lua (spliced in by
-- shared/redis/scripts.py at the '-- #include _transition' line).
-- K: job, events stream, logs stream, private build override, [source], [destination],
--    [fair-queue state, with flag 'f'], [stats hash, with flag 's': always last]
-- A: id, status, now_ms, terminal(0|1), ttl_s, events_max, flags, score,
--    field, value, ...   (a field named '+name' is HINCRBY name value; '-name' is
--    HDEL name after the move's own writes, e.g. a phase that never really began)
-- flags: 'r' return the record (as one JSON object)
--        'a' LREM id from the source list
--        'A' LREM id from the source list; abort unless it was there (recovery)
--        'z' ZREM id from the source zset; abort unless it was there (scheduler)
--        'x' LREM id from the source list only if the job is missing or ended
--        'p' LPUSH onto the destination list (the tail: claimed last)
--        'h' RPUSH onto the destination list (the head: claimed next)
--        'f' insert into the destination list at the job's fair place (_fair.lua)
--        'd' ZADD onto the destination zset with score A[8]
--        's' count the move in the stats hash, the last key (_stats.lua)
-- Returns {-1} if the job does not exist; {0, current} if it has already ended
-- (ended jobs never change again; the id is still removed from the source);
-- {2, current} if a strict removal found nothing (someone else moved it);
-- else {1, record-json-or-''}.
-- #include _fair
-- #include _stats
local function transition(K, A)
  local id, status, now, flags = A[1], A[2], A[3], A[7]
  local function has(f) return string.find(flags, f, 1, true) ~= nil end
  local function unlink()
    if has('a') or has('A') or has('x') then redis.call('LREM', K[5], 0, id) end
    if has('z') then redis.call('ZREM', K[5], id) end
  end
  local cur = redis.call('HMGET', K[1], 'status', 'ended_at', 'p:' .. status .. ':end')
  local current = cur[1]
  if not current then
    unlink()
    return {-1}
  end
  if cur[2] then
    unlink()
    return {0, current}
  end
  if has('A') then
    if redis.call('LREM', K[5], 0, id) == 0 then return {2, current} end
  elseif has('z') then
    if redis.call('ZREM', K[5], id) == 0 then return {2, current} end
  elseif has('a') then
    redis.call('LREM', K[5], 0, id)
  end
  local set = {'status', status, 'updated_at', now}
  if current ~= status then
    set[#set + 1] = 'p:' .. current .. ':end'
    set[#set + 1] = now
    set[#set + 1] = 'p:' .. status .. ':start'
    set[#set + 1] = now
    -- Re-entering a phase (a retry) starts it afresh.
    if cur[3] then redis.call('HDEL', K[1], 'p:' .. status .. ':end') end
  end
  local drop = {}
  for i = 9, #A, 2 do
    local sign = string.sub(A[i], 1, 1)
    if sign == '+' then
      redis.call('HINCRBY', K[1], string.sub(A[i], 2), A[i + 1])
    elseif sign == '-' then
      drop[#drop + 1] = string.sub(A[i], 2)
    else
      set[#set + 1] = A[i]
      set[#set + 1] = A[i + 1]
    end
  end
  local terminal = A[4] == '1'
  if terminal then
    set[#set + 1] = 'ended_at'
    set[#set + 1] = now
  end
  redis.call('HSET', K[1], unpack(set))
  if #drop > 0 then redis.call('HDEL', K[1], unpack(drop)) end
  -- The record as written, read once for both the stats and the reply ('f' writes
  -- 'qscore' after: the reply then reads it again).
  local record
  local function read_record()
    record = record or hash_table(K[1])
    return record
  end
  if has('s') then
    stats_moved(K[#K], K[1], status, now, terminal, terminal and read_record() or nil)
  end
  if has('p') then redis.call('LPUSH', K[6], id) end
  if has('h') then redis.call('RPUSH', K[6], id) end
  if has('f') then
    fair_push(K[6], K[7], string.sub(K[1], 1, #K[1] - #id), id)
    record = nil
  end
  if has('d') then redis.call('ZADD', K[6], A[8], id) end
  redis.call('XADD', K[2], 'MAXLEN', '~', A[6], '*',
    'kind', 'job', 'id', id, 'status', status, 'at', now)
  if terminal then
    redis.call('XADD', K[3], '*', 'kind', 'end', 'status', status, 'at', now)
    redis.call('EXPIRE', K[1], A[5])
    redis.call('EXPIRE', K[3], A[5])
    if status == 'live' or status == 'superseded' then
      redis.call('DEL', K[4])  -- built: never needed again
    else
      redis.call('EXPIRE', K[4], A[5])  -- a failed job may be retried while its record lives
    end
  else
    redis.call('XADD', K[3], '*', 'kind', 'phase', 'status', status, 'at', now)
  end
  if has('r') then return {1, cjson.encode(read_record())} end
  return {1, ''}
end
