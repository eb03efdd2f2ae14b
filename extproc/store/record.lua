-- Accounting: add spend to the current bucket and release the request's holds, for
-- all of a request's counters in one call (after _window.lua).
--
-- KEYS: per counter, its bucket hash then its hold zset.
-- ARGV: now_ms, hold_id, then per counter: window_s, bucket_s, amount, hold amount
--       (the amount this request's hold was placed with, "0" if none or unknown).
-- Returns the number of counters. Never retried by the caller: applied twice, it
-- would count twice.

local now_arg, hold_id = ARGV[1], ARGV[2]
local now_ms = tonumber(now_arg)
local per = 4
local count = #KEYS / 2

for k = 1, count do
  local a = 2 + (k - 1) * per
  local w = open_window(KEYS[2 * k - 1], KEYS[2 * k], now_ms, now_arg, ARGV[a + 1], ARGV[a + 2])
  local amount = ARGV[a + 3]
  if tonumber(amount) > 0 then
    if not w.oldest then
      -- c - n, not c: a slightly late record (another replica's clock, a replay) still
      -- lands in its own bucket instead of being taken as aged out.
      w.oldest = w.c - w.n
      redis.call('HSET', w.bkey, 'o', fmt(w.oldest), 'g', w.geometry)
    end
    -- A bucket below `o` is older than the window already: it would not count anyway.
    if w.c >= w.oldest then
      redis.call('HINCRBY', w.bkey, fmt(w.c), amount)
      redis.call('HINCRBY', w.bkey, 't', amount)
      extend_ttl(w.bkey, w.retention_ms)
    end
  end
  local hold = ARGV[a + 4]
  -- ZREM answers 0 when the lease already expired and was purged: subtract only once.
  if tonumber(hold) > 0 and redis.call('ZREM', w.zkey, hold_id .. ':' .. hold) == 1 then
    add_held(w.bkey, '-' .. hold)
  end
end

return count
