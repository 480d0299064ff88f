import time, os
from capapp import app, add, boom, flaky, sleepy, rejecter
from datetime import datetime, timedelta, timezone
print(add.delay(2, 3).get(timeout=10))
try: boom.delay("bad input").get(timeout=10)
except Exception as e: print("boom", repr(e))
print(flaky.delay(7).get(timeout=10))
r = sleepy.apply_async((5,), countdown=2); app.control.revoke(r.id); time.sleep(3.5)
e = add.apply_async((1, 1), expires=datetime.now(timezone.utc) - timedelta(seconds=5)); time.sleep(1)
rejecter.delay(); time.sleep(1)
s = sleepy.delay(30); time.sleep(1); app.control.revoke(s.id, terminate=True, signal="SIGTERM"); time.sleep(2)
print("done")
