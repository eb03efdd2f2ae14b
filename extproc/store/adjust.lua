-- An operator's adjustment of one counter's spend (after _window.lua): the admin API's
-- AdjustSpend. Not on any request's path.
--
-- KEYS: the counter's bucket hash, then its hold zset.
-- ARGV: now_ms ("" for Redis's clock), window_s, bucket_s, credit (an integer string:
--       the amount taken off, newest bucket first, never below zero; "" takes it all).
-- Returns {spend before, spend after} as integer strings. Holds are left as they are.

local now_ms, now_arg = clock(ARGV[1])
local w = open_window(KEYS[1], KEYS[2], now_ms, now_arg, ARGV[2], ARGV[3])
local before = w.spend
local credit = before
if ARGV[4] ~= '' then
  credit = math.min(tonumber(ARGV[4]), before)
end
if credit >= before then
  if w.oldest then
    drop_buckets(w.bkey, w.oldest, w.n)
  end
  return {fmt(before), '0'}
end
local left = credit
if w.oldest then
  for i = w.oldest + w.n, w.oldest, -1 do
    if left <= 0 then
      break
    end
    local field = fmt(i)
    local amount = tonumber(redis.call('HGET', w.bkey, field) or '0')
    if amount > 0 then
      local taken = math.min(amount, left)
      if taken == amount then
        redis.call('HDEL', w.bkey, field)
      else
        redis.call('HINCRBY', w.bkey, field, fmt(-taken))
      end
      left = left - taken
    end
  end
end
local total = redis.call('HINCRBY', w.bkey, 't', fmt(-(credit - left)))
return {fmt(before), fmt(total)}
