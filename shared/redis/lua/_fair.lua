-- Fair queueing (spliced in by shared/redis/scripts.py at '-- #include _fair'):
-- a stage's queue stays one list, taken from the right, kept sorted by each job's
-- 'qscore' so that taking the oldest element serves, in order:
--   1. priority: every 'high' job before any 'normal', every 'normal' before 'low';
--   2. within a priority, submitters in turn: each submitter's jobs get tags 1, 2,
--      3, ... counted from the turn being served when they arrive, so one
--      submitter's 30 queued jobs delay another's single job by at most one turn;
--   3. within a submitter and priority, arrival order (FIFO).
-- qscore = rank * SPAN + tag (rank: high 0, normal 1, low 2). Every push takes a
-- new turn in that queue (a retry or a lock recheck too); only recovery's push to the
-- head (next in line, no qscore change) skips the order.
-- State, per queue: fair hash, field '<rank>:<submitter>' -> that submitter's last tag.
-- Cost: the scans stop at the first element that decides; with one submitter and
-- one priority that is the first element looked at (LPUSH, as before fairness).
local FAIR_RANKS = {high = 0, normal = 1, low = 2}
local FAIR_SPAN = 1e13
local FAIR_CHUNK = 32
local FAIR_SCAN_MAX = 20000  -- elements looked at per scan; beyond, the job goes last

-- The qscore of a queued id (0, taken first, when unknown: pushed to the head by
-- recovery, or by a version without fairness).
local function fair_score(prefix, id)
  return tonumber(redis.call('HGET', prefix .. id, 'qscore') or '0') or 0
end

-- Walk the queue from one end ('L': the newest first; 'R': the oldest first) and
-- return the index (from the left) and score of the first element for which
-- stop(score) is true, or nil when none is.
local function fair_find(queue, prefix, from, stop)
  local length = redis.call('LLEN', queue)
  local limit = math.min(length, FAIR_SCAN_MAX)
  local seen = 0
  while seen < limit do
    local first, last = seen, math.min(seen + FAIR_CHUNK, limit) - 1
    local ids
    if from == 'L' then
      ids = redis.call('LRANGE', queue, first, last)
    else
      ids = redis.call('LRANGE', queue, -last - 1, -first - 1)
    end
    local n = #ids
    for j = 1, n do
      local k = (from == 'L') and j or (n - j + 1)
      local score = fair_score(prefix, ids[k])
      if stop(score) then
        local index = (from == 'L') and (first + j - 1) or (length - 1 - (first + j - 1))
        return index, score, ids[k]
      end
    end
    seen = seen + n
    if n == 0 then break end
  end
  return nil
end

-- Insert id into queue at its place by score: after (to the left of) every element
-- with a score <= its own, before every element with a higher one.
local function fair_insert(queue, prefix, id, score)
  local index, _, pivot = fair_find(queue, prefix, 'L', function(s) return s <= score end)
  if index == nil then
    if redis.call('LLEN', queue) > FAIR_SCAN_MAX then
      redis.call('LPUSH', queue, id)  -- past the scan bound: last in line
    else
      redis.call('RPUSH', queue, id)  -- lower than everything queued: next in line
    end
  elseif index == 0 then
    redis.call('LPUSH', queue, id)
  else
    redis.call('LINSERT', queue, 'BEFORE', pivot, id)
  end
end

-- Push job id (record at prefix .. id) onto queue at its fair place.
local function fair_push(queue, fair, prefix, id)
  local job = prefix .. id
  local f = redis.call('HMGET', job, 'priority', 'submitter')
  local rank = FAIR_RANKS[f[1] or 'normal'] or 1
  local field = rank .. ':' .. (f[2] or '')
  local tag = tonumber(redis.call('HGET', fair, field) or '0') + 1
  local low, high = rank * FAIR_SPAN, (rank + 1) * FAIR_SPAN
  -- The turn being served in this priority: the oldest queued job of it.
  local _, oldest = fair_find(queue, prefix, 'R', function(s) return s >= low end)
  if oldest ~= nil and oldest < high then
    local _, newest = fair_find(queue, prefix, 'L', function(s) return s < high end)
    local from, to = oldest - low, newest - low + 1
    if tag < from then tag = from end  -- a newcomer joins the turn being served
    if tag > to then tag = to end  -- and nobody waits behind turns not handed out
  end
  redis.call('HSET', fair, field, tag)
  local score = low + tag
  redis.call('HSET', job, 'qscore', string.format('%.0f', score))
  fair_insert(queue, prefix, id, score)
end
