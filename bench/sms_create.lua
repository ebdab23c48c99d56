-- wrk script of bench/sms_bench.py: POST Message creates straight at the Twilio sandbox.
--
-- wrk -t T -c C -d D -s bench/sms_create.lua URL/2010-04-01/Accounts/AC.../Messages.json
--     -- FORM BASIC_AUTH
--
-- The same create (urlencoded FORM, HTTP Basic BASIC_AUTH) over and over: the sandbox's
-- own limit, without the SDK. done() prints "SMSBENCH status_<code>=<count>" per thread
-- and "SMSBENCH duration_us=<us>".

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

statuses = {}

function init(args)
   wrk.method = "POST"
   wrk.body = args[1]
   wrk.headers["Authorization"] = "Basic " .. args[2]
   wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
   wrk.headers["User-Agent"] = "twilio-python/9.13.0 (bench)"
   req = wrk.format()
end

function request()
   return req
end

function response(status, headers, body)
   local key = "status_" .. status
   statuses[key] = (statuses[key] or 0) + 1
end

function done(summary, latency, requests)
   for _, thread in ipairs(threads) do
      for key, value in pairs(thread:get("statuses")) do
         print(string.format("SMSBENCH %s=%d", key, value))
      end
   end
   print(string.format("SMSBENCH duration_us=%d", summary.duration))
end
