import redis, json, base64, sys, os
r = redis.Redis.from_url(os.environ["CAP_URL"])
p = r.pubsub()
db = os.environ["CAP_URL"].rsplit("/",1)[1]
p.psubscribe(f"/{db}.celeryev/*")
out = open(sys.argv[1], "w")
for m in p.listen():
    if m["type"] != "pmessage": continue
    env = json.loads(m["data"])
    body = json.loads(base64.b64decode(env["body"]))
    out.write(json.dumps({"channel": m["channel"].decode(), "envelope": env, "body": body}) + "\n"); out.flush()
