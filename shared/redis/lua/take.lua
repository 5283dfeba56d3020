-- Claim the oldest id of a non-empty queue and start it, in one round trip.
-- KEYS: source list, active list, events stream
-- ARGV: job key prefix, logs key prefix, build override key prefix, then
--       transition's A[2..] (status, now_ms, terminal, ttl_s, events_max, flags,
--       score, field, value, ...)
-- Returns false when the source is empty (the caller then blocks in BLMOVE),
-- else {id, transition result}. Key prefixes come from shared/keys.py.
-- #include _transition
local id = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
if not id then return false end
local args = {id}
for i = 4, #ARGV do args[#args + 1] = ARGV[i] end
return {id, transition({ARGV[1] .. id, KEYS[3], ARGV[2] .. id, ARGV[3] .. id, KEYS[2]}, args)}
