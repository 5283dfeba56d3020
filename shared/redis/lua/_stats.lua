-- Counting in the fleet-wide stats hash, inside the script that makes the event happen
-- so a count is exact: a retried client call finds the job already moved and counts
-- nothing. Spliced in by '-- #include _stats'; shared/engine/stats.py reads the hash
-- and documents its fields. STATS_BOUNDS_MS must equal stats.BOUNDS_MS (a unit test
-- compares them).
local STATS_BOUNDS_MS = {10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
  120000, 300000, 600000, 1800000, 3600000}

-- One observation of `ms` in histogram `series` (buckets are not cumulative here; the
-- count is their sum, see shared/engine/stats.py).
local function stats_observe(stats, series, ms)
  if ms < 0 then ms = 0 end
  local le = 'inf'
  for _, bound in ipairs(STATS_BOUNDS_MS) do
    if ms <= bound then
      le = string.format('%d', bound)
      break
    end
  end
  redis.call('HINCRBY', stats, series .. ':le:' .. le, 1)
  redis.call('HINCRBY', stats, series .. ':sum_ms', string.format('%d', ms))
end

-- The hash at `key` as a Lua table.
local function hash_table(key)
  local flat = redis.call('HGETALL', key)
  local out = {}
  for i = 1, #flat, 2 do out[flat[i]] = flat[i + 1] end
  return out
end

-- Job `job` has just ended at `status` (its record already written): count the ending
-- and observe each phase it finished and its whole life ('total'). `record` is the
-- job's hash as a table if the caller has read it already, else nil.
local function stats_ended(stats, job, status, now, record)
  redis.call('HINCRBY', stats, 'deployments:' .. status, 1)
  record = record or hash_table(job)
  if record['dead'] == '1' then redis.call('HINCRBY', stats, 'dead_letters', 1) end
  if record['created_at'] then
    stats_observe(stats, 'phase:total', tonumber(now) - tonumber(record['created_at']))
  end
  for name, start in pairs(record) do
    local phase = string.match(name, '^p:(.+):start$')
    local finish = phase and record['p:' .. phase .. ':end']
    if finish then stats_observe(stats, 'phase:' .. phase, tonumber(finish) - tonumber(start)) end
  end
end

-- A transition moved a job to `status` with the 's' flag: count what it means.
local function stats_moved(stats, job, status, now, terminal, record)
  if terminal then
    stats_ended(stats, job, status, now, record)
  elseif status == 'retrying' then
    redis.call('HINCRBY', stats, 'retries', 1)
  end
end
