-- Shared prelude, prepended to admit.lua, record.lua and release.lua when they are
-- loaded: the trailing-window arithmetic of extproc/store/windows.py, step for step
-- as extproc/store/memory.py does it, so the two backends agree.
--
-- Per counter, two keys in one hash slot:
--   {tag}:b  hash: bucket index -> amount, t = running spend total, o = lowest index that
--            may hold a bucket (all buckets lie in [o, o + n]), h = running held total,
--            g = "window/bucket" the buckets were cut with.
--   {tag}:h  zset: member "hold_id:amount", score = lease expiry (ms).
--
-- Numbers: Lua numbers are doubles, exact to 2^53. Amounts arrive as integer strings
-- and reach Redis unchanged (HINCRBY is 64-bit integer arithmetic); a number computed
-- here goes back to Redis only through fmt(), never tostring() (which prints 1e+15).

local function fmt(x)
  return string.format('%d', x)
end

-- The time a script works at, in ms: the caller's (ARGV, an integer string), or with ""
-- Redis's own clock, so that every replica cuts buckets and ends leases by one clock
-- whatever its own says. Returns the number and its integer string.
local function clock(arg)
  if arg ~= '' then
    return tonumber(arg), arg
  end
  local t = redis.call('TIME')
  local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  return ms, fmt(ms)
end

-- Whole seconds, rounded up (windows.ceil_seconds).
local function ceil_seconds(ms)
  return math.floor((ms + 999) / 1000)
end

local function buckets_per_window(window_s, bucket_s)
  return math.ceil(window_s / bucket_s)
end

-- Only ever lengthen a TTL: a record must not cut short the life a hold's lease needs.
local function extend_ttl(key, ms)
  local ttl = redis.call('PTTL', key)
  if ttl ~= -2 and ttl < ms then
    redis.call('PEXPIRE', key, fmt(ms))
  end
end

-- Drop every bucket and the bookkeeping that describes them; `h` (holds) stays. An
-- empty hash disappears by itself, which is how an idle counter's key goes away.
local function drop_buckets(bkey, oldest, n)
  local fields = {'t', 'o', 'g'}
  if oldest then
    for i = oldest, oldest + n do
      fields[#fields + 1] = fmt(i)
    end
  end
  redis.call('HDEL', bkey, unpack(fields))
end

-- Add `delta` (an integer string) to the held total; returns the new total. A total at
-- or below zero is removed: zero so an idle hash can vanish, below zero only if the
-- hash expired under live holds, and a negative hold would let spend slip through.
local function add_held(bkey, delta)
  local held = redis.call('HINCRBY', bkey, 'h', delta)
  if held <= 0 then
    redis.call('HDEL', bkey, 'h')
    return 0
  end
  return held
end

-- Holds whose lease expired at or before now stop counting.
local function purge_holds(w, now_arg)
  local expired = redis.call('ZRANGEBYSCORE', w.zkey, '-inf', now_arg)
  if #expired == 0 then
    return
  end
  local sum = 0
  for _, member in ipairs(expired) do
    sum = sum + (tonumber(string.match(member, ':(%d+)$')) or 0)
  end
  redis.call('ZREMRANGEBYSCORE', w.zkey, '-inf', now_arg)
  if sum > 0 then
    w.held = add_held(w.bkey, fmt(-sum))
  end
end

-- Buckets below c - n have aged out. Walks at most n + 1 indexes, and each index is
-- walked once in the counter's life because `o` only moves forward: amortised O(1).
local function age_out(w)
  if not w.oldest then
    return
  end
  local live_from = w.c - w.n
  if w.oldest >= live_from then
    return
  end
  if w.oldest + w.n < live_from then
    drop_buckets(w.bkey, w.oldest, w.n)
    w.spend, w.oldest = 0, nil
    return
  end
  local fields = {}
  for i = w.oldest, live_from - 1 do
    fields[#fields + 1] = fmt(i)
  end
  local values = redis.call('HMGET', w.bkey, unpack(fields))
  local sum = 0
  for i = 1, #fields do
    if values[i] then
      sum = sum + tonumber(values[i])
    end
  end
  if sum >= w.spend then
    drop_buckets(w.bkey, w.oldest, w.n)
    w.spend, w.oldest = 0, nil
    return
  end
  redis.call('HDEL', w.bkey, unpack(fields))
  if sum > 0 then
    redis.call('HINCRBY', w.bkey, 't', fmt(-sum))
    w.spend = w.spend - sum
  end
  redis.call('HSET', w.bkey, 'o', fmt(live_from))
  w.oldest = live_from
end

-- Load one counter and bring it to now: geometry check, expired holds out, aged
-- buckets out. `window_arg`, `bucket_arg`: integer strings from ARGV.
local function open_window(bkey, zkey, now_ms, now_arg, window_arg, bucket_arg)
  local window_s, bucket_s = tonumber(window_arg), tonumber(bucket_arg)
  local w = {
    bkey = bkey,
    zkey = zkey,
    bucket_ms = bucket_s * 1000,
    n = buckets_per_window(window_s, bucket_s),
    geometry = window_arg .. '/' .. bucket_arg,
  }
  w.c = math.floor(now_ms / w.bucket_ms)
  w.retention_ms = (w.n + 1) * w.bucket_ms
  local f = redis.call('HMGET', bkey, 't', 'o', 'h', 'g')
  w.spend = tonumber(f[1]) or 0
  w.oldest = tonumber(f[2])
  w.held = tonumber(f[3]) or 0
  if f[4] and f[4] ~= w.geometry then
    -- The entry's window changed (a config reload): old bucket indexes mean nothing at
    -- the new size, so spend starts afresh; holds carry over.
    local old_window, old_bucket = string.match(f[4], '^(%d+)/(%d+)$')
    local old_n = w.n
    if old_window then
      old_n = buckets_per_window(tonumber(old_window), tonumber(old_bucket))
    end
    drop_buckets(bkey, w.oldest, old_n)
    w.spend, w.oldest = 0, nil
  end
  purge_holds(w, now_arg)
  age_out(w)
  return w
end

-- Whole seconds until spend + held < limit (windows.reset_seconds); 0 when under.
local function reset_seconds(w, limit, now_ms)
  local remaining = w.spend + w.held
  if remaining < limit then
    return 0
  end
  if w.oldest then
    local fields = {}
    for i = w.oldest, w.oldest + w.n do
      fields[#fields + 1] = fmt(i)
    end
    local values = redis.call('HMGET', w.bkey, unpack(fields))
    for k = 1, #fields do
      if values[k] then
        remaining = remaining - tonumber(values[k])
        if remaining < limit then
          local index = w.oldest + k - 1
          return math.max(1, ceil_seconds((index + w.n + 1) * w.bucket_ms - now_ms))
        end
      end
    end
  end
  -- The holds alone keep it over: the earliest lease to expire frees the first of them.
  local first = redis.call('ZRANGE', w.zkey, 0, 0, 'WITHSCORES')
  if first[2] then
    return math.max(1, ceil_seconds(tonumber(first[2]) - now_ms))
  end
  return ceil_seconds(w.retention_ms)
end
