-- Release a request's holds without spending (after _window.lua).
--
-- KEYS: per counter, its bucket hash then its hold zset.
-- ARGV: hold_id, then per counter: the hold amount ("0" if none or unknown).
-- Returns the number of holds released. Safe to repeat: a released hold is gone.

local hold_id = ARGV[1]
local released = 0

for k = 1, #KEYS / 2 do
  local hold = ARGV[1 + k]
  if tonumber(hold) > 0 and redis.call('ZREM', KEYS[2 * k], hold_id .. ':' .. hold) == 1 then
    add_held(KEYS[2 * k - 1], '-' .. hold)
    released = released + 1
  end
end

return released
