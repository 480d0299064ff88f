// sprout-task: write Sprout tasks in JavaScript (compiled by `sprout build x.js` with
// componentize-js into a component of the `sprout:task` world).
//
//   import { task, TaskError, Retry, log } from "sprout-task";
//   task("js.add", (a, b) => a + b);
//   task("js.greet", (who, { punctuation = "!" } = {}) => `hello ${who}${punctuation}`);
//
// - `task(name, fn)` registers `fn`: positional args are spread, and kwargs (when the
//   job has any) come as one last object argument. The return value is JSON-encoded.
// - A thrown error fails the job with its constructor's name as the kind (`TypeError`,
//   `RangeError`, a class of your own; the engine's "out of memory" is `MemoryError`);
//   `throw new TaskError(kind, message)` sets it; `throw new Retry(message,
//   countdownSeconds)` asks for another attempt.
// - `log(level, message)`, `progress(done, total)` and `job()` talk to the worker.
//
// componentize-js compiles one module: `sprout build` puts this file first and turns
// the task file's `import { a, b as c } from "sprout-task"` into
// `const { a, b: c } = __sprout;`. Everything lives inside `__sprout`, so a task file
// may use any top-level name except `__sprout*`, `tasks` and `run` (the exports).
import {
  log as __sproutHostLog,
  progress as __sproutHostProgress,
  job as __sproutHostJob,
} from "sprout:task/host@0.1.0";

const __sprout = (() => {
  const __sproutTasks = new Map();

  /** Fails the job with an explicit kind (Celery's exc_type) and message. */
  class TaskError extends Error {
    constructor(kind, message = "") {
      super(message);
      if (typeof kind !== "string" || kind === "") {
        throw new TypeError("TaskError kind must be a non-empty string");
      }
      this.kind = kind;
    }
  }

  /** Asks the worker to run the job again (after `countdown` seconds, or its backoff). */
  class Retry extends Error {
    constructor(message = "", countdown = undefined) {
      super(message);
      if (countdown !== undefined && !(Number.isFinite(countdown) && countdown >= 0)) {
        throw new RangeError("Retry countdown must be a finite number of seconds >= 0");
      }
      this.countdown = countdown;
    }
  }

  /** Registers `fn` as the task `name`; returns `fn`. */
  function task(name, fn) {
    if (typeof name !== "string" || name.trim() === "") {
      throw new TypeError("a task name must be a non-empty string");
    }
    if (typeof fn !== "function") throw new TypeError(`task ${name}: not a function`);
    if (__sproutTasks.has(name)) throw new Error(`two tasks are named ${name}`);
    __sproutTasks.set(name, fn);
    return fn;
  }

  const LEVELS = ["trace", "debug", "info", "warn", "error"];

  /** Writes a line to the job's log: level is trace, debug, info, warn or error. */
  function log(level, message) {
    if (!LEVELS.includes(level)) throw new RangeError(`log level must be one of ${LEVELS}`);
    __sproutHostLog(level, String(message));
  }

  /** Reports progress: `done` out of `total` units. */
  function progress(done, total) {
    __sproutHostProgress(BigInt(done), BigInt(total));
  }

  /** The job being run: { id, task, retries, queue }. */
  function job() {
    return __sproutHostJob();
  }

  function __sproutFail(kind, message, retry) {
    // componentize-js maps a thrown value to the `err` case of run's result.
    return { kind, message: String(message), retry };
  }

  /** The `tasks` export. */
  function tasks() {
    return [...__sproutTasks.keys()].sort();
  }

  /** The `run` export: JSON in, JSON out, every failure a task-error. */
  function run(name, argsJson, kwargsJson) {
    const fn = __sproutTasks.get(name);
    if (!fn) {
      throw __sproutFail("NotRegistered", `no task named ${name} (this file has: ${tasks()})`);
    }
    let args, kwargs;
    try {
      args = JSON.parse(argsJson);
      kwargs = JSON.parse(kwargsJson);
    } catch (e) {
      throw __sproutFail("DecodeError", `arguments are not valid JSON: ${e.message}`);
    }
    if (!Array.isArray(args)) throw __sproutFail("TypeError", "args must be a JSON array");
    if (kwargs === null || typeof kwargs !== "object" || Array.isArray(kwargs)) {
      throw __sproutFail("TypeError", "kwargs must be a JSON object");
    }
    let value;
    try {
      value = Object.keys(kwargs).length ? fn(...args, kwargs) : fn(...args);
    } catch (e) {
      if (e instanceof Retry) {
        const ms = e.countdown === undefined ? undefined : BigInt(Math.round(e.countdown * 1000));
        throw __sproutFail("Retry", e.message, { countdownMs: ms });
      }
      if (e instanceof TaskError) throw __sproutFail(e.kind, e.message);
      // The engine's own "out of memory" (a refused memory growth): kind MemoryError,
      // as Python's, which the worker reports as MemoryLimitExceeded when the job's
      // memory limit refused the growth.
      if (e === "out of memory" || (e instanceof Error && e.message === "out of memory")) {
        throw __sproutFail("MemoryError", "out of memory");
      }
      if (e instanceof Error) throw __sproutFail(e.constructor?.name || "Error", e.message);
      throw __sproutFail("Error", String(e));
    }
    let text;
    try {
      text = JSON.stringify(value === undefined ? null : value);
    } catch (e) {
      throw __sproutFail("EncodeError", `the result of ${name} is not JSON-encodable: ${e.message}`);
    }
    return text;
  }

  return { task, TaskError, Retry, log, progress, job, tasks, run };
})();

/** The `tasks` export of the `sprout:task` world. */
export function tasks() {
  return __sprout.tasks();
}

/** The `run` export of the `sprout:task` world. */
export function run(name, argsJson, kwargsJson) {
  return __sprout.run(name, argsJson, kwargsJson);
}
