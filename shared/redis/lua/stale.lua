-- What a taken job needs to know to decide whether it is already stale
-- (deployer/staleness.py decides): the newest newer submission of its service that
-- has not ended, and the service's live deployment. Records the job's settings
-- digest (its build override and secrets), which a later job pinned to the same
-- commit compares with while this one is live. Entries of the submissions zset whose
-- job record has expired are dropped as they are met.
-- KEYS: submissions:<service> (zset id -> seq), site:<service>, job
-- ARGV: job key prefix, seq of the job, settings digest, most newer entries to read
-- Returns {found, newer id, newer seq, newer status, live id, live seq, commit,
-- repo_url, root_dir, settings digest}: found is 1 when a newer submission has not
-- ended (the newest such), else 0 and its three fields are ''; the live deployment's
-- fields are '' when there is none or its record has expired.
local prefix, seq = ARGV[1], ARGV[2]
if redis.call('HEXISTS', KEYS[3], 'ended_at') == 0 then
  redis.call('HSET', KEYS[3], 'settings_digest', ARGV[3])
end
local newer = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', '(' .. seq,
  'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[4]))
local found = nil
for i = 1, #newer, 2 do
  local id = newer[i]
  local cur = redis.call('HMGET', prefix .. id, 'status', 'ended_at')
  if not cur[1] then
    redis.call('ZREM', KEYS[1], id)
  elseif not cur[2] then
    found = {id, newer[i + 1], cur[1]}
    break
  end
end
local live = {'', '', '', '', '', ''}
local site = redis.call('HMGET', KEYS[2], 'id', 'seq')
if site[1] then
  local rec = redis.call('HMGET', prefix .. site[1], 'commit', 'repo_url', 'root_dir',
    'settings_digest')
  live = {site[1], site[2] or '', rec[1] or '', rec[2] or '', rec[3] or '', rec[4] or ''}
end
if found then
  return {1, found[1], found[2], found[3], unpack(live)}
end
return {0, '', '', '', unpack(live)}
