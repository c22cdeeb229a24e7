// kiln's REPL for the @deno/sandbox SDK's deno.repl() and deno.eval()
// (issue 17): kilnd runs it with `deno run -A` and talks to it over stdin,
// one JSON request per line, {"id", "op": "eval", "code"} or {"id", "op":
// "call", "fn", "args"}. Each answer is one line on stderr, marked by a
// leading ASCII RS (0x1e) that kilnd takes out of the stream the SDK sees;
// the program's own output passes through untouched. Code runs as scripts
// in this realm, so top-level const and let persist from one eval to the
// next, as in Deno's REPL.
import vm from "node:vm";

const enc = new TextEncoder();
const answer = (o) => Deno.stderr.writeSync(enc.encode("\x1e" + JSON.stringify(o) + "\n"));

function serializeError(e) {
  if (e instanceof Error) {
    return {
      constructorName: e.constructor?.name ?? "Error",
      name: e.name ?? null,
      message: String(e.message),
      stack: null,
      code: typeof e.code === "string" ? e.code : null,
    };
  }
  return { constructorName: "Error", message: `Uncaught ${String(e)}`, code: null, stack: null };
}

function jsonable(v) {
  if (v === undefined || typeof v === "function" || typeof v === "symbol") return null;
  if (typeof v === "bigint") return v.toString();
  try {
    return JSON.parse(JSON.stringify(v, (_k, x) => (typeof x === "bigint" ? x.toString() : x)) ?? "null");
  } catch {
    return String(v);
  }
}

async function run(code) {
  try {
    return await vm.runInThisContext(code, { filename: "<repl>" });
  } catch (e) {
    // Top-level await is not valid in a script: as an expression, then as an
    // async body (whose declarations do not outlive it).
    if (!(e instanceof SyntaxError) || !/await/.test(String(e.message))) throw e;
  }
  try {
    return await vm.runInThisContext(`(async () => (\n${code}\n))()`, { filename: "<repl>" });
  } catch (e) {
    if (!(e instanceof SyntaxError)) throw e;
  }
  return await vm.runInThisContext(`(async () => {\n${code}\n})()`, { filename: "<repl>" });
}

async function handle(req) {
  try {
    let v;
    if (req.op === "eval") {
      v = await run(String(req.code));
    } else if (req.op === "call") {
      const fn = vm.runInThisContext(`(${req.fn})`, { filename: "<repl>" });
      if (typeof fn !== "function") throw new TypeError(`${req.fn} is not a function`);
      v = await fn(...(Array.isArray(req.args) ? req.args : []));
    } else {
      throw new TypeError(`unknown op ${req.op}`);
    }
    answer({ id: req.id, ok: jsonable(v) });
  } catch (e) {
    answer({ id: req.id, error: serializeError(e) });
  }
}

let buf = "";
const dec = new TextDecoder();
for await (const chunk of Deno.stdin.readable) {
  buf += dec.decode(chunk, { stream: true });
  let nl;
  while ((nl = buf.indexOf("\n")) >= 0) {
    const line = buf.slice(0, nl);
    buf = buf.slice(nl + 1);
    if (!line.trim()) continue;
    let req;
    try {
      req = JSON.parse(line);
    } catch {
      continue;
    }
    // One at a time, in order, as a REPL does.
    await handle(req);
  }
}
Deno.exit(0);
