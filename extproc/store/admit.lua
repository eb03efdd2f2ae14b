-- Admission, atomically for all of a request's counters (after _window.lua).
--
-- KEYS: per counter, its bucket hash then its hold zset.
-- ARGV: now_ms ("" for Redis's clock), hold_id, lease_ms, then per counter: window_s, bucket_s, limit,
--       blocking ("1"/"0"), hold amount (integer string, "0" for none).
-- Returns {admitted (1/0), {spend, held, over (1/0), reset_seconds} per counter}; spend
-- and held as the exact integer strings Redis keeps. A state is the counter before this
-- request's own hold. A rejected request places no hold.
-- With all blocking flags "0" and all holds "0" this is a read: nothing but ageing.

local hold_id, lease_ms = ARGV[2], tonumber(ARGV[3])
local now_ms, now_arg = clock(ARGV[1])
local per = 5
local count = #KEYS / 2

local opened = {}
local result = {1}
for k = 1, count do
  local a = 3 + (k - 1) * per
  local w = open_window(KEYS[2 * k - 1], KEYS[2 * k], now_ms, now_arg, ARGV[a + 1], ARGV[a + 2])
  local limit = tonumber(ARGV[a + 3])
  local over = w.spend + w.held >= limit
  if over and ARGV[a + 4] == '1' then
    result[1] = 0
  end
  local exact = redis.call('HMGET', w.bkey, 't', 'h')
  result[k + 1] = {exact[1] or '0', exact[2] or '0', over and 1 or 0, reset_seconds(w, limit, now_ms)}
  opened[k] = w
end

if result[1] == 1 then
  local expiry = fmt(now_ms + lease_ms)
  for k = 1, count do
    local hold = ARGV[3 + (k - 1) * per + 5]
    if tonumber(hold) > 0 then
      local w = opened[k]
      -- ZADD answers 0 for a member already there (the same admit sent twice, or the
      -- same counter listed twice): it refreshes the lease but must not add twice.
      if redis.call('ZADD', w.zkey, expiry, hold_id .. ':' .. hold) == 1 then
        redis.call('HINCRBY', w.bkey, 'h', hold)
      end
      extend_ttl(w.bkey, w.retention_ms + lease_ms)
      extend_ttl(w.zkey, w.retention_ms + lease_ms)
    end
  end
end

return result
