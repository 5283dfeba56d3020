-- Move one job to a new status with its queue bookkeeping (see _transition.lua).
-- #include _transition
return transition(KEYS, ARGV)
