// JavaScript example tasks: `sprout build tasks/js/math_js.js -o out/` (componentize-js).
import { task, TaskError, Retry, log } from "sprout-task";

// js.add(a, b): the smallest JavaScript task.
task("js.add", (a, b) => a + b);

// js.fib(n): CPU-bound JavaScript.
task("js.fib", (n) => {
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`n must be a non-negative integer, not ${n}`);
  let [a, b] = [0, 1];
  for (let i = 0; i < n; i++) [a, b] = [b, (a + b) % 1000000007];
  return a;
});

// js.greet(who, {punctuation}): keyword arguments arrive as a last object argument.
task("js.greet", (who, { punctuation = "!" } = {}) => {
  log("info", `greeting ${who}`);
  return `hello ${who}${punctuation}`;
});

// js.fail(kind): fails on purpose; the kind reaches Celery clients as exc_type.
task("js.fail", (kind = "TypeError") => {
  if (kind === "TaskError") throw new TaskError("FeedError", "not a feed");
  if (kind === "Retry") throw new Retry("busy", 2);
  if (kind === "RangeError") throw new RangeError("out of range");
  throw new TypeError("bad type");
});

// js.alloc(mib): allocates `mib` MiB at once; past the memory limit the job ends
// MemoryLimitExceeded.
task("js.alloc", (mib = 1024) => new Uint8Array(mib * 1024 * 1024).length);

// js.loop(): never ends on its own; fuel or the time limit ends it.
task("js.loop", () => {
  for (;;) {}
});
