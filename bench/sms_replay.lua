-- wrk script of bench/sms_bench.py: replay distinct pre-signed Twilio webhooks.
--
-- wrk -t T -c C -d D -s bench/sms_replay.lua URL -- DATA PATH FIRST COUNT T
--
-- DATA holds one request per line: "<X-Twilio-Signature>\t<urlencoded form>". This run
-- replays lines FIRST .. FIRST+COUNT-1 (0-based); thread t of T sends lines
-- FIRST+t, FIRST+t+T, ... in order, so no two threads send the same request. A thread
-- that runs out starts its share again (counted as "wraps": those are repeats, which
-- the hub must treat as no-ops). Each thread counts what it issued and every answer by
-- status; done() prints one machine-readable line per thread:
--   SMSBENCH thread=<t> issued=<n> wraps=<w> responses=<r> status_<code>=<count> ...

local threads = {}
local counter = 1

function setup(thread)
   thread:set("tid", counter - 1)
   table.insert(threads, thread)
   counter = counter + 1
end

local requests = {}
local n = 0
local idx = 0
issued = 0
wraps = 0
responses = 0
statuses = {}

function init(args)
   local data, path = args[1], args[2]
   local first, count = tonumber(args[3]), tonumber(args[4])
   local stride = tonumber(args[5])
   local headers = {
      ["Content-Type"] = "application/x-www-form-urlencoded",
      ["User-Agent"] = "TwilioProxy/1.1",
      ["Accept"] = "*/*",
   }
   local line_no = -1
   for line in io.lines(data) do
      line_no = line_no + 1
      if line_no >= first + count then
         break
      end
      if line_no >= first and (line_no - first) % stride == tid then
         local tab = string.find(line, "\t", 1, true)
         headers["X-Twilio-Signature"] = string.sub(line, 1, tab - 1)
         n = n + 1
         requests[n] = wrk.format("POST", path, headers, string.sub(line, tab + 1))
      end
   end
   if n == 0 then
      error("thread " .. tid .. " has no requests in " .. data)
   end
   verifying = (tid == 0)
end

-- wrk calls request() of the first thread once before the run to count pipelined
-- requests (script_verify_request) and never sends that one: it must not use up a line.
verifying = false

function request()
   if verifying then
      verifying = false
      return requests[1]
   end
   idx = idx + 1
   if idx > n then
      idx = 1
      wraps = wraps + 1
   end
   issued = issued + 1
   return requests[idx]
end

function response(status, headers, body)
   responses = responses + 1
   local key = "status_" .. status
   statuses[key] = (statuses[key] or 0) + 1
end

function done(summary, latency, requests)
   for _, thread in ipairs(threads) do
      local line = string.format(
         "SMSBENCH thread=%d issued=%d wraps=%d responses=%d",
         thread:get("tid"), thread:get("issued"), thread:get("wraps"), thread:get("responses")
      )
      local st = thread:get("statuses")
      for key, value in pairs(st) do
         line = line .. string.format(" %s=%d", key, value)
      end
      print(line)
   end
   print(string.format(
      "SMSBENCH total duration_us=%d requests=%d connect_errors=%d read_errors=%d "
         .. "write_errors=%d status_errors=%d timeouts=%d",
      summary.duration, summary.requests, summary.errors.connect, summary.errors.read,
      summary.errors.write, summary.errors.status, summary.errors.timeout
   ))
end
