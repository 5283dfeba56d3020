-- Raise a counter (seq:<service>, fence:<service>) to at least a floor; never lower
-- it, so a recovery run twice, or beside live INCRs, only ever moves it up.
-- KEYS: the counter
-- ARGV: the floor
-- Returns {1, floor} raised; {0, current} already at or above the floor.
local current = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local floor = tonumber(ARGV[1])
if current >= floor then return {0, current} end
redis.call('SET', KEYS[1], ARGV[1])
return {1, ARGV[1]}
