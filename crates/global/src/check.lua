-- meshlimit-global: one check of the token bucket at KEYS[1]; takes a token if there is one.
--
-- ARGV: [1] now in ns (decimal), or "" to use this server's TIME; [2] refill mode, "s" (smooth)
-- or "i" (interval); [3] max_tokens; [4], [5]: smooth: rate_den and token (the engine's scaled
-- units: tokens_per_fill / g and fill_interval_ns / g, g their gcd), interval: tokens_per_fill
-- and fill_interval_ns; [6] the key's TTL in ms.
-- Reply: {admitted (1 or 0), whole tokens left, ns until the next token (decimal string)}.
--
-- The value at KEYS[1] is "<mode> <max> <a> <b>|<t> <x>": the plan it was written under, then
-- smooth: t = the last time seen, x = scaled units missing from a full bucket (0 = full);
-- interval: t = the last top-up, x = tokens held. The arithmetic is meshlimit-bucket's
-- (model.rs, arith.rs), step for step.
--
-- Lua numbers are doubles, exact only below 2^53, while these quantities reach 2^104 (a smooth
-- window: 2^40 tokens of up to 2^64 units) and clock values 2^64. Two paths give the same
-- answers: the narrow one (`narrow`, most checks) in plain doubles where a plan's quantities
-- are proven below 2^53, and the limb one (`exact`, any plan) where every quantity is a
-- natural number held in limbs of 21 bits, least significant first, with no high zero limbs
-- ({} is zero): a limb product (2^42) plus carries stays below 2^53.

local floor = math.floor
local TWO53 = 9007199254740992

-- The time now as a decimal string of ns: ARGV[1], or this server's TIME.
local function now_string()
  if ARGV[1] ~= '' then
    if not string.find(ARGV[1], '^%d+$') then
      error('meshlimit: now is not a decimal number: ' .. ARGV[1])
    end
    return ARGV[1]
  end
  -- Redis < 7 replicates a script that read TIME by its effects only when told to (the
  -- default since 5); 7 always does, and keeps this call as a no-op.
  if redis.replicate_commands then
    redis.replicate_commands()
  end
  local t = redis.call('TIME')
  return t[1] .. string.format('%06d', tonumber(t[2])) .. '000'
end

-- The narrow path: most plans, checked within 104 days of their last write, need no limbs.
-- When the plan's largest quantity (smooth: the window, max × token; interval: the fill
-- interval) is below 2^53, so is every quantity of the check except the elapsed time, whose
-- seconds and nanoseconds are taken apart, and two products that may round but only when
-- they are past 2^53, where every comparison they enter comes out the same. It answers
-- nothing (and the limb path decides) for a wider plan, a longer gap, or changed settings.

local NS = 1000000000

-- Seconds and nanoseconds of a decimal ns count, exact as doubles (at most 2^35 s).
local function split(s)
  local n = #s
  if n <= 9 then
    return 0, tonumber(s)
  end
  return tonumber(string.sub(s, 1, n - 9)), tonumber(string.sub(s, n - 8))
end

-- The decimal ns count s minus r (below 2^53, at most s).
local function minus(s, r)
  local h, l = split(s)
  local rh = floor(r / NS)
  h, l = h - rh, l - (r - rh * NS)
  if l < 0 then
    h, l = h - 1, l + NS
  end
  if h > 0 then
    return string.format('%d%09d', h, l)
  end
  return string.format('%d', l)
end

local function narrow(sig, mode, max, a, b, now_s, ts, xs)
  local smooth = mode == 's'
  local window = smooth and max * b or max
  -- (An unknown mode goes on to the limb path, which refuses it.)
  if (not smooth and mode ~= 'i') or window >= TWO53 or b >= TWO53 then
    return nil
  end
  local t_s, x, e = now_s, smooth and 0 or max, 0
  if ts then
    local nh, nl = split(now_s)
    local th, tl = split(ts)
    local dh = nh - th
    if dh >= 9e6 or dh <= -9e6 then
      return nil
    end
    -- Below 9.000001e15 < 2^53 either way: exact.
    t_s, x, e = ts, tonumber(xs), dh * NS + (nl - tl)
  end
  local admitted, remaining, wait
  if smooth then
    local rate_den, token = a, b
    if e > 0 then
      -- e × rate_den rounds only past 2^53, beyond any x: the bucket is full either way.
      local gained = e * rate_den
      x = gained >= x and 0 or x - gained
      t_s = now_s
    end
    -- x + token rounds only past 2^53 > window: a rejection either way.
    admitted = x + token <= window
    if admitted then
      x = x + token
    end
    if x == 0 then
      remaining, wait = max, 0
    else
      -- Below 2^53 the floor of a quotient is exact.
      local q = floor(x / token)
      local r = x - q * token
      local missing = token
      remaining = max - q
      if r > 0 then
        missing, remaining = r, remaining - 1
      end
      wait = floor(missing / rate_den)
      if wait * rate_den < missing then
        wait = wait + 1
      end
    end
  else
    local per_fill, interval = a, b
    local r = 0
    if e > 0 then
      local k = floor(e / interval)
      r = e - k * interval
      if k > 0 then
        -- k × per_fill rounds only past 2^53, beyond any shortfall: full either way.
        if x < max then
          local gained = k * per_fill
          x = gained >= max - x and max or x + gained
        end
        t_s = minus(now_s, r)
      end
    end
    admitted = x >= 1
    if admitted then
      x = x - 1
    end
    remaining = x
    -- The next top-up: a whole interval after the last, which was r ago (or is ahead).
    wait = x == max and 0 or interval - r
  end
  local value = sig .. '|' .. t_s .. ' ' .. string.format('%d', x)
  return { admitted and 1 or 0, remaining, string.format('%d', wait) }, value
end

-- The limb path: any plan, any gap, and plan changes. Its library is built inside it, so
-- that a narrow check does not pay for making its closures and constants.
local function exact(now_s, sig, raw, old_sig, ts, xs)
  local B = 2097152 -- 2^21

  local function trim(a)
    local n = #a
    while n > 0 and a[n] == 0 do
      a[n] = nil
      n = n - 1
    end
    return a
  end

  -- A limb number from a double holding an integer (exact: dividing by a power of two is).
  local function num(x)
    local r = {}
    while x > 0 do
      local q = floor(x / B)
      r[#r + 1] = x - q * B
      x = q
    end
    return r
  end

  -- The nearest double, within 7 roundings: a relative error below 2^-50.
  local function approx(a)
    local x = 0
    for i = #a, 1, -1 do
      x = x * B + a[i]
    end
    return x
  end

  local function cmp(a, b)
    if #a ~= #b then
      return #a < #b and -1 or 1
    end
    for i = #a, 1, -1 do
      if a[i] ~= b[i] then
        return a[i] < b[i] and -1 or 1
      end
    end
    return 0
  end

  local function add(a, b)
    local r, c = {}, 0
    local n = #a > #b and #a or #b
    for i = 1, n do
      local s = (a[i] or 0) + (b[i] or 0) + c
      if s >= B then
        r[i], c = s - B, 1
      else
        r[i], c = s, 0
      end
    end
    if c > 0 then
      r[n + 1] = c
    end
    return r
  end

  -- a - b; a must not be smaller (an error, never a wrong answer).
  local function sub(a, b)
    if #b > #a then
      error('meshlimit: negative difference')
    end
    local r, c = {}, 0
    for i = 1, #a do
      local s = a[i] - (b[i] or 0) - c
      if s < 0 then
        r[i], c = s + B, 1
      else
        r[i], c = s, 0
      end
    end
    if c ~= 0 then
      error('meshlimit: negative difference')
    end
    return trim(r)
  end

  local function mul(a, b)
    local na, nb = #a, #b
    if na == 0 or nb == 0 then
      return {}
    end
    if nb == 1 then
      -- One limb: the common case, in one pass.
      local r, c, m = {}, 0, b[1]
      for i = 1, na do
        local t = a[i] * m + c
        c = floor(t / B)
        r[i] = t - c * B
      end
      if c > 0 then
        r[na + 1] = c
      end
      return r
    elseif na == 1 then
      return mul(b, a)
    end
    local r = {}
    for i = 1, na + nb do
      r[i] = 0
    end
    for i = 1, na do
      local c, ai = 0, a[i]
      for j = 1, nb do
        local t = r[i + j - 1] + ai * b[j] + c
        c = floor(t / B)
        r[i + j - 1] = t - c * B
      end
      r[i + nb] = c
    end
    return trim(r)
  end

  -- Quotient and remainder. Each round subtracts an estimate of the quotient from doubles,
  -- shrunk by 2^-48 so that it never exceeds the true quotient (the estimate's error is below
  -- 2^-49); each round gains about 47 bits, so a 110-bit quotient takes four.
  local SHRINK = 1 - 2 ^ -48
  local function divmod(a, b)
    if #b == 0 then
      error('meshlimit: division by zero')
    elseif #b == 1 then
      -- By one limb: schoolbook, each step below 2^42.
      local d, q, rem = b[1], {}, 0
      for i = #a, 1, -1 do
        local t = rem * B + a[i]
        local digit = floor(t / d)
        q[i], rem = digit, t - digit * d
      end
      return trim(q), rem > 0 and { rem } or {}
    end
    local q, r, fb = {}, a, approx(b)
    for _ = 1, 12 do
      if cmp(r, b) < 0 then
        return q, r
      end
      local e = floor(approx(r) / fb * SHRINK)
      if e < 1 then
        e = 1
      end
      local eb = num(e)
      r = sub(r, mul(eb, b))
      q = add(q, eb)
    end
    error('meshlimit: division did not converge')
  end

  -- Decimal text goes in pieces of 15 digits: below 10^15 < 2^53, each is exact as a double.
  local TEN15 = num(1e15)
  local BELOW_TWO53 = num(TWO53)

  local function parse(s)
    if type(s) ~= 'string' or not string.find(s, '^%d+$') then
      error('meshlimit: not a decimal number: ' .. tostring(s))
    end
    local n = #s
    if n <= 15 then
      return num(tonumber(s))
    end
    local high = parse(string.sub(s, 1, n - 15))
    return add(mul(high, TEN15), num(tonumber(string.sub(s, n - 14))))
  end

  local function str(a)
    if cmp(a, BELOW_TWO53) < 0 then
      return string.format('%d', approx(a))
    end
    local q, r = divmod(a, TEN15)
    return str(q) .. string.format('%015d', approx(r))
  end

  local ONE = { 1 }

  local function plan_of(mode, max, a, b)
    if mode == 's' then
      local p = { smooth = true, max = parse(max), rate_den = parse(a), token = parse(b) }
      p.window = mul(p.max, p.token)
      return p
    elseif mode == 'i' then
      return { smooth = false, max = parse(max), per_fill = parse(a), interval = parse(b) }
    end
    error('meshlimit: unknown refill mode ' .. tostring(mode))
  end

  -- Tokens accrued up to now. An earlier now than t is no time passing (model.rs): callers'
  -- clocks, or a failed-over server's, may disagree by a little.
  local function refill(p, t, x, now)
    if cmp(now, t) <= 0 then
      return t, x
    end
    if p.smooth then
      if #x > 0 then
        local gained = mul(sub(now, t), p.rate_den)
        x = cmp(gained, x) >= 0 and {} or sub(x, gained)
      end
      return now, x
    end
    local k, r = divmod(sub(now, t), p.interval)
    if #k == 0 then
      return t, x
    end
    if cmp(x, p.max) < 0 then
      x = add(x, mul(k, p.per_fill))
      if cmp(x, p.max) > 0 then
        x = p.max
      end
    end
    -- The last top-up moves by whole intervals: the phase is kept.
    return sub(now, r), x
  end

  -- The state under a new plan: what model.rs's reconfigure does. Whole tokens are kept
  -- (clamped); a smooth bucket keeps its fraction too, rounded down to the new resolution; an
  -- interval bucket keeps counting from its last top-up.
  local function convert(old, new, t, x, now)
    t, x = refill(old, t, x, now)
    local later = cmp(now, t) > 0 and now or t
    if new.smooth then
      local units
      if old.smooth then
        units = divmod(mul(sub(old.window, x), new.token), old.token)
      else
        units = mul(x, new.token)
      end
      if cmp(units, new.window) > 0 then
        units = new.window
      end
      return later, sub(new.window, units)
    end
    if old.smooth then
      local whole = divmod(sub(old.window, x), old.token)
      return later, cmp(whole, new.max) > 0 and new.max or whole
    end
    return t, cmp(x, new.max) > 0 and new.max or x
  end

  local now = parse(now_s)
  local plan = plan_of(ARGV[2], ARGV[3], ARGV[4], ARGV[5])
  local t, x
  if raw then
    t, x = parse(ts), parse(xs)
    if old_sig ~= sig then
      local m, om, oa, ob = string.match(old_sig, '^(%a) (%d+) (%d+) (%d+)$')
      if not m then
        error('meshlimit: unreadable bucket plan at ' .. KEYS[1])
      end
      t, x = convert(plan_of(m, om, oa, ob), plan, t, x, now)
    end
  else
    -- A new bucket (or one idle past its TTL, so full again) starts full, its origin now.
    t, x = now, plan.smooth and {} or plan.max
  end

  t, x = refill(plan, t, x, now)
  local admitted, remaining, wait
  if plan.smooth then
    local after = add(x, plan.token)
    admitted = cmp(after, plan.window) <= 0
    if admitted then
      x = after
    end
    if #x == 0 then
      remaining, wait = approx(plan.max), '0'
    else
      -- Held: window - x = max × token - x, so whole tokens are max - ceil(x / token), and
      -- the next one needs the units of x beyond a whole token (a whole token's when none).
      local q, r = divmod(x, plan.token)
      local missing = plan.token
      remaining = approx(plan.max) - approx(q)
      if #r > 0 then
        missing = r
        remaining = remaining - 1
      end
      local w, wr = divmod(missing, plan.rate_den)
      if #wr > 0 then
        w = add(w, ONE)
      end
      wait = str(w)
    end
  else
    admitted = #x > 0
    if admitted then
      x = sub(x, ONE)
    end
    remaining = approx(x)
    if cmp(x, plan.max) == 0 then
      wait = '0'
    else
      wait = str(sub(add(t, plan.interval), cmp(now, t) > 0 and now or t))
    end
  end
  -- Formatting costs more than comparing: reuse the time's text when it is now.
  local t_s = cmp(t, now) == 0 and now_s or str(t)
  return { admitted and 1 or 0, remaining, wait }, sig .. '|' .. t_s .. ' ' .. str(x)
end

local key = KEYS[1]
local now_s = now_string()
local mode, max, a, b = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local sig = mode .. ' ' .. max .. ' ' .. a .. ' ' .. b
local raw = redis.call('GET', key)
local old_sig, ts, xs
if raw then
  old_sig, ts, xs = string.match(raw, '^([^|]+)|(%d+) (%d+)$')
  if not old_sig then
    return redis.error_reply('meshlimit: unreadable bucket state at ' .. key)
  end
end
local reply, value
if not raw or old_sig == sig then
  reply, value = narrow(sig, mode, tonumber(max), tonumber(a), tonumber(b), now_s, ts, xs)
end
if not reply then
  reply, value = exact(now_s, sig, raw, old_sig, ts, xs)
end
if value ~= raw then
  redis.call('SET', key, value, 'PX', ARGV[6])
end
return reply
