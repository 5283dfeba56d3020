-- Take a job and start it, in one round trip; optionally end the slot's last job first.
-- KEYS: queue, active list, events stream; then, to end a job first, that job's
--       transition keys after its events stream: job, logs stream, build override,
--       [destination], [fair-queue state], [stats hash] (its source is the active
--       list)
-- ARGV: job key prefix, logs key prefix, build override key prefix, mode, waiting
--       status, n, then n start arguments: transition's A[2..] (status, now_ms,
--       terminal, ttl_s, events_max, flags, score, field, value, ...); then, to end a
--       job first, that transition's whole A (id, status, now_ms, ...).
-- mode 'q': move the oldest id of the queue into the active list and start it
--           (flag 'x': an ended or missing job is dropped from the active list).
-- mode 'a': sent right behind this connection's BLMOVE, which has just moved an id
--           into the active list (or timed out): start the oldest id of the active
--           list whose job is still at the waiting status (most often the one this
--           BLMOVE moved; any other is one another slot's BLMOVE moved before, whose
--           own call then starts this one, or one whose start was lost): so jobs
--           start in the order they were claimed, even when several blocked slots
--           are woken at once. Ended or missing jobs in the active list are dropped
--           from it. The start time is the server's: the client read its clock
--           before it blocked.
-- Returns {ended, id, started, dropped}: ended is the first transition's reply ({}
-- if none); id is '' and started {} when nothing was taken; dropped lists the ids
-- mode 'a' removed, each followed by its status ('' if the job is gone). Key
-- prefixes come from shared/redis/keys.py.
-- #include _transition
local queue, active, events = KEYS[1], KEYS[2], KEYS[3]
local jobs, logs, builds = ARGV[1], ARGV[2], ARGV[3]
local mode, waiting, n = ARGV[4], ARGV[5], tonumber(ARGV[6])
local ended = {}
if #KEYS > 3 then
  local K = {KEYS[4], events, KEYS[5], KEYS[6], active, KEYS[7], KEYS[8], KEYS[9]}
  local A = {}
  for i = 7 + n, #ARGV do A[#A + 1] = ARGV[i] end
  ended = transition(K, A)
end
local function start(id, now)
  local A = {id}
  for i = 7, 6 + n do A[#A + 1] = ARGV[i] end
  if now then A[3] = now end
  return transition({jobs .. id, events, logs .. id, builds .. id, active}, A)
end
if mode == 'q' then
  local id = redis.call('LMOVE', queue, active, 'RIGHT', 'LEFT')
  if not id then return {ended, '', {}, {}} end
  return {ended, id, start(id), {}}
end
-- The active list's head is its newest id (LMOVE pushes there): the last waiting id
-- met on the way to the tail is the oldest.
local dropped, seen, oldest = {}, {}, nil
for _, id in ipairs(redis.call('LRANGE', active, 0, -1)) do
  if not seen[id] then
    seen[id] = true
    local cur = redis.call('HMGET', jobs .. id, 'status', 'ended_at')
    if not cur[1] or cur[2] then
      redis.call('LREM', active, 0, id)
      dropped[#dropped + 1] = id
      dropped[#dropped + 1] = cur[1] or ''
    elseif cur[1] == waiting then
      oldest = id
    end
  end
end
if not oldest then return {ended, '', {}, dropped} end
local t = redis.call('TIME')
local now = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
return {ended, oldest, start(oldest, now), dropped}
