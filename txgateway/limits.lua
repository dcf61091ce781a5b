-- The Redis side of txgateway.limits.RedisLimiter.  Each entry point below is sent as one
-- script: these shared helpers followed by its own body.  The arithmetic repeats limits.py
-- operation by operation, in doubles, so both backends decide alike: keep the two in step.
--
-- KEYS[1]: the key's rate hash (w: window index; rp, rc: requests in the previous and current
--          minute; tp, tc: tokens), KEYS[2]: the prefix of its spend keys (period appended).
-- Numbers come back as strings formatted with %.17g, which Python reads back exactly.

local WINDOW = 60

-- Seconds since the epoch: the Redis server's clock, or the one a test gives.
local function clock(given)
  if given ~= '' then
    return tonumber(given)
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- The window hash rolled to the minute holding `now`: index, rp, rc, tp, tc.
local function roll(key, now)
  local index = math.floor(now / WINDOW)
  local s = redis.call('HMGET', key, 'w', 'rp', 'rc', 'tp', 'tc')
  local w = tonumber(s[1])
  if w == index then
    return index, tonumber(s[2]), tonumber(s[3]), tonumber(s[4]), tonumber(s[5])
  end
  if w == index - 1 then
    return index, tonumber(s[3]), 0, tonumber(s[5]), 0
  end
  return index, 0, 0, 0, 0
end

local function store(key, index, rp, rc, tp, tc)
  redis.call('HSET', key, 'w', index, 'rp', rp, 'rc', rc, 'tp', tp, 'tc', tc)
  redis.call('EXPIRE', key, 2 * WINDOW)
end

-- Days since 1970-01-01 to a civil date, and back (H. Hinnant's algorithms).
local function civil(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then
    y = y + 1
  end
  return y, m, d
end

local function days_from_civil(y, m, d)
  if m <= 2 then
    y = y - 1
  end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- The budget period holding `now`: its name and the seconds until it ends (nil: never).
local function period_of(now, period)
  if period == 'total' then
    return 'total', nil
  end
  local days = math.floor(now / 86400)
  local y, m, d = civil(days)
  if period == 'day' then
    return string.format('%04d-%02d-%02d', y, m, d), (days + 1) * 86400 - now
  end
  local ny, nm = y, m + 1
  if nm == 13 then
    ny, nm = y + 1, 1
  end
  return string.format('%04d-%02d', y, m), days_from_civil(ny, nm, 1) * 86400 - now
end

-- @entry points
-- @admit
-- ARGV: rpm, tpm, estimated tokens, budget, budget period, now ('' for TIME).
-- Returns: refusal reason ('' when admitted), now, rp, rc, tp, tc after it, spend.
local rpm, tpm, estimate = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local budget, period = tonumber(ARGV[4]), ARGV[5]
local now = clock(ARGV[6])
local spend = 0
if budget > 0 then
  spend = tonumber(redis.call('GET', KEYS[2] .. period_of(now, period)) or '0')
end
local windows = rpm > 0 or tpm > 0
local index, rp, rc, tp, tc = 0, 0, 0, 0, 0
if windows then
  index, rp, rc, tp, tc = roll(KEYS[1], now)
end
local elapsed = now - index * WINDOW
local reason = ''
if budget > 0 and spend >= budget then
  reason = 'budget'
elseif rpm > 0 and rp * (1 - elapsed / WINDOW) + rc + 1 > rpm then
  reason = 'requests'
elseif tpm > 0 and tp * (1 - elapsed / WINDOW) + tc + estimate > tpm then
  reason = 'tokens'
end
if reason == '' and windows then
  if rpm > 0 then
    rc = rc + 1
  end
  if tpm > 0 then
    tc = tc + estimate
  end
  store(KEYS[1], index, rp, rc, tp, tc)
end
return {reason, string.format('%.17g', now), rp, rc, tp, tc, string.format('%.17g', spend)}
-- @commit
-- ARGV: token correction (actual - estimated), cost in USD, budget period, now ('' for TIME).
local delta, cost, period = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local now = clock(ARGV[4])
if delta ~= 0 then
  local index, rp, rc, tp, tc = roll(KEYS[1], now)
  if delta >= 0 then
    tc = tc + delta
  else
    local refund = -delta
    local taken = math.min(tc, refund)
    tp = math.max(0, tp - (refund - taken))
    tc = tc - taken
  end
  store(KEYS[1], index, rp, rc, tp, tc)
end
if cost > 0 then
  local name, ttl = period_of(now, period)
  local key = KEYS[2] .. name
  local spend = tonumber(redis.call('GET', key) or '0') + cost
  redis.call('SET', key, string.format('%.17g', spend))
  if ttl then
    redis.call('EXPIRE', key, math.max(1, math.ceil(ttl)))
  end
end
return 1
-- @spent
-- ARGV: budget period, now ('' for TIME).  Returns the period's spend.
local name = period_of(clock(ARGV[2]), ARGV[1])
return redis.call('GET', KEYS[2] .. name) or '0'
