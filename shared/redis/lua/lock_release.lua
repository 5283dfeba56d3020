-- Release service locks: by token (the holder), by owner (a person), or forced. A
-- released lock goes straight to its oldest live waiter in line (fresh fence, message
-- 'g:<token>:<fence>'); with nobody in line the release itself is announced.
-- KEYS: events stream, locks index, then per service: lock, fence, history, waiters;
--       then the delayed zset, then per service its waiting jobs' set
-- ARGV: count, mode ('token' | 'owner' | 'force'), token or owner, now_ms,
--       events_max, actor, then per service: name, channel
-- A release that leaves a lock free (nobody in line) also makes the jobs waiting for
-- it in 'delayed' due now (ZADD XX: only those still there), and forgets them.
-- Token mode returns {released count}: a lock that is no longer ours is left alone.
-- Owner and force modes (one service) return {1, record} released, {0} not held,
-- {-1, record} held by someone else.
--
-- Records are edited as text where their shape is known (cjson costs more than the
-- rest of a release): a record written by lockbook's _body, or by a hand-over here,
-- starts with its token and ends with '"acquired_at":N,"expires_at":M}' or a fence;
-- anything else is decoded. A '"key":' found outside the start can only be a key:
-- inside a JSON string every quote is escaped.
local n, mode, value, now = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
local function key(i, j) return KEYS[2 + 4 * (i - 1) + j] end -- lock, fence, history, waiters
local function event(action, name, owner, fence)
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*', 'kind', 'lock', 'action', action,
    'service', name, 'owner', owner, 'fence', fence, 'by', ARGV[6], 'at', now)
end
-- owner and fence of a record, read as text (nil when its shape is not the known one)
local function owner_fence(raw)
  local owner = string.match(raw, '"owner":"([%w._@:+-]*)"')
  local fence = string.match(raw, '"fence":(%d+)[,}]')
  if owner and fence then return owner, fence end
  local rec = cjson.decode(raw)
  return rec.owner, rec.fence
end
local function wake(i)
  local jobs = KEYS[3 + 4 * n + i]
  local ids = redis.call('SMEMBERS', jobs)
  for _, id in ipairs(ids) do redis.call('ZADD', KEYS[3 + 4 * n], 'XX', now, id) end
  if #ids > 0 then redis.call('DEL', jobs) end
end
local function hand_over(i, name, channel)
  local entries = redis.call('HGETALL', key(i, 4))
  local best, best_since
  for j = 1, #entries, 2 do
    local since, deadline = string.match(entries[j + 1], '^(%d+)|(%d+)|')
    if tonumber(deadline) <= now then
      redis.call('HDEL', key(i, 4), entries[j]) -- that waiter gave up or died
    elseif best == nil or tonumber(since) < best_since then
      best, best_since = j, tonumber(since)
    end
  end
  if best == nil then
    redis.call('PUBLISH', channel, name)
    wake(i)
    return
  end
  local token = entries[best]
  local ttl, body = string.match(entries[best + 1], '^%d+|%d+|(%d+)|(.*)$')
  redis.call('HDEL', key(i, 4), token)
  local fence = redis.call('INCR', key(i, 2))
  local expires = now + tonumber(ttl)
  local head = string.match(body, '^(.*)"acquired_at":%d+,"expires_at":%d+}$')
  local out, owner
  if head then
    out = head .. '"acquired_at":' .. now .. ',"expires_at":' .. expires .. ',"fence":' ..
      fence .. '}'
    owner = string.match(body, '"owner":"([%w._@:+-]*)"')
  end
  if not owner then
    local rec = cjson.decode(body)
    rec.fence, rec.acquired_at, rec.expires_at = fence, now, expires
    out, owner = cjson.encode(rec), rec.owner
  end
  redis.call('SET', key(i, 1), out, 'PX', ttl)
  redis.call('HSET', key(i, 3), 'current', out)
  redis.call('ZADD', KEYS[2], now, name)
  event('locked', name, owner, fence)
  redis.call('PUBLISH', channel, 'g:' .. token .. ':' .. fence)
end
local released, last = 0, nil
for i = 1, n do
  local name, channel = ARGV[5 + 2 * i], ARGV[6 + 2 * i]
  local held = redis.call('GET', key(i, 1))
  if not held then
    if mode ~= 'token' then return {0} end
  else
    local ours, owner, fence, ending, ended
    local mine = '{"token":"' .. value .. '",'
    if mode == 'token' and string.sub(held, 1, #mine) == mine
      and string.sub(held, -1) == '}' and not string.find(held, '"end":', 1, true) then
      -- our own record, in the known shape: end it as text
      owner, fence = owner_fence(held)
      ours, ending = true, 'released'
      ended = string.sub(held, 1, -2) .. ',"end":"released","released_at":' .. now ..
        ',"released_by":' .. cjson.encode(ARGV[6]) .. '}'
    else
      local rec = cjson.decode(held)
      ours = mode == 'force' or (mode == 'token' and rec.token == value)
        or (mode == 'owner' and rec.owner == value)
      if ours then
        if mode == 'force' and rec.owner ~= ARGV[6] then rec['end'] = 'forced'
        else rec['end'] = 'released' end
        rec.released_at, rec.released_by = now, ARGV[6]
        owner, fence, ending, ended = rec.owner, rec.fence, rec['end'], cjson.encode(rec)
      end
    end
    if not ours then
      if mode ~= 'token' then return {-1, held} end
    else
      redis.call('DEL', key(i, 1))
      redis.call('HSET', key(i, 3), 'current', ended, 'previous', ended)
      event(ending, name, owner, fence)
      hand_over(i, name, channel)
      released, last = released + 1, held
    end
  end
end
if mode == 'token' then return {released} end
return {1, last}
