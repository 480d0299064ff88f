// Runs componentize-js's API (the `jco componentize` CLI path fails here with
// "os error 44"; the library call works). Used by `sprout build x.js`:
//
//   node componentize.mjs COMPONENTIZE_JS_ENTRY SOURCE WIT_DIR WORLD OUT
//
// Features: stdio (console output goes to the job's captured log), random and clocks
// stay; outgoing HTTP (fetch) and the incoming-handler are left out: the task world
// exports `tasks` and `run` only.
import { readFile, writeFile } from "node:fs/promises";
import { pathToFileURL } from "node:url";

const [entry, source, witPath, worldName, out] = process.argv.slice(2);
const { componentize } = await import(pathToFileURL(entry).href);
const { component } = await componentize(await readFile(source, "utf8"), {
  witPath,
  worldName,
  disableFeatures: ["http", "fetch-event"],
});
await writeFile(out, component);
