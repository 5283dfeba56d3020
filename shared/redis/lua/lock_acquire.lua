-- Take one or more service locks, all or nothing, each with a fresh fencing token.
-- KEYS: events stream, locks index, then per service: lock, fence, history, waiters
-- ARGV: count, ttl_ms, now_ms, events_max, owner, refresh (1: the same owner renews a
--       lock it holds), queue_until_ms (one service: wait in line for a direct
--       handoff until then; 0: do not), token, record (JSON without 'fence'), names...
-- Returns {1, fence...} taken; {3, fence} handed to this token while it waited in
-- line; {2, record} renewed by its owner; {0, index, holder record, pttl_ms} the
-- index-th service is held by someone else.
local n, ttl, now, token = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[8]
local function key(i, j) return KEYS[2 + 4 * (i - 1) + j] end -- lock, fence, history, waiters
local function present(v) return v ~= nil and v ~= cjson.null end
local function event(action, name, owner, fence, at)
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'kind', 'lock',
    'action', action, 'service', name, 'owner', owner, 'fence', fence, 'at', at)
end
for i = 1, n do
  local held = redis.call('GET', key(i, 1))
  if held then
    local rec = cjson.decode(held)
    if n == 1 and rec.token == token then return {3, rec.fence} end
    if ARGV[6] == '1' and n == 1 and rec.owner == ARGV[5] then
      local new = cjson.decode(ARGV[9])
      new.token, new.fence, new.acquired_at = rec.token, rec.fence, rec.acquired_at
      local out = cjson.encode(new)
      redis.call('SET', key(1, 1), out, 'PX', ttl)
      redis.call('HSET', key(1, 3), 'current', out)
      event('renewed', ARGV[10], rec.owner, rec.fence, now)
      return {2, out}
    end
    if ARGV[7] ~= '0' and n == 1 then
      local waiters = key(1, 4)
      local queued = redis.call('HGET', waiters, token)
      local since = queued and string.match(queued, '^(%d+)|') or ARGV[3]
      redis.call('HSET', waiters, token, since .. '|' .. ARGV[7] .. '|' .. ttl .. '|' .. ARGV[9])
      redis.call('PEXPIRE', waiters, tonumber(ARGV[7]) - now + 60000)
    end
    return {0, i, held, redis.call('PTTL', key(i, 1))}
  end
end
local taken = {1}
local body = string.sub(ARGV[9], 1, -2)
for i = 1, n do
  local history, name = key(i, 3), ARGV[9 + i]
  local fence = redis.call('INCR', key(i, 2))
  local rec = body .. ',"fence":' .. fence .. '}'
  redis.call('SET', key(i, 1), rec, 'PX', ttl)
  if ARGV[7] ~= '0' then redis.call('HDEL', key(i, 4), token) end
  local last = redis.call('HGET', history, 'current')
  -- An ended record (its "end" is a string) was written as both 'current' and
  -- 'previous' by its release, so 'previous' is already right: only decode the
  -- record of a holder that never released (no key "end" can occur inside a JSON
  -- string, where every quote is escaped).
  if last and not string.find(last, '"end":"', 1, true) then
    local prev = cjson.decode(last)
    if not present(prev['end']) then
      -- Nobody released it: it expired (its holder crashed, hung or forgot it).
      prev['end'], prev.released_at = 'expired', prev.expires_at
      event('expired', name, prev.owner, prev.fence, prev.expires_at)
    end
    redis.call('HSET', history, 'previous', cjson.encode(prev), 'current', rec)
  else
    redis.call('HSET', history, 'current', rec)
  end
  redis.call('ZADD', KEYS[2], now, name)
  event('locked', name, ARGV[5], fence, now)
  taken[#taken + 1] = fence
end
return taken
